package auth

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwk"
)

// Public-key algorithms that the Verifier accepts. Each key type allows
// exactly one: RSA keys verify RS256 and P-256 keys verify ES256.
const (
	algRS256 = "RS256"
	algES256 = "ES256"
)

// minRSABits is the smallest RSA modulus accepted in a key file.
const minRSABits = 2048

// DefaultReloadInterval is how often a Verifier rereads its key files by
// default.
const DefaultReloadInterval = 10 * time.Second

// unknownKidReload is the shortest time between two rereads caused by a
// token whose "kid" is not among the keys, so that a stream of forged kids
// cannot turn into a stream of file reads.
const unknownKidReload = time.Second

// publicKey is one verification key read from a key file.
type publicKey struct {
	kid string // empty when the file gave none
	alg string // algRS256 or algES256
	key any    // *rsa.PublicKey or *ecdsa.PublicKey
}

// keySet holds the keys of one file and rereads the file when its content
// changes. A reread that fails keeps the previous keys and logs why. It is
// safe for concurrent use.
type keySet struct {
	path     string
	jwks     bool // JSON Web Key Set; otherwise PEM
	interval time.Duration
	now      func() time.Time
	log      *slog.Logger

	mu        sync.Mutex
	keys      []publicKey
	content   []byte
	checked   time.Time // last time the file was read
	lastError string    // last reread error logged, to log each once
}

// loadKeySet reads the keys of path, a JWKS file when jwks is true and a PEM
// file otherwise. It fails when the file cannot be read, holds no usable key,
// or holds a key of an unsupported type.
func loadKeySet(path string, jwks bool, interval time.Duration, now func() time.Time, log *slog.Logger) (*keySet, error) {
	s := &keySet{path: path, jwks: jwks, interval: interval, now: now, log: log}

	content, keys, err := s.read()
	if err != nil {
		return nil, err
	}
	s.content, s.keys, s.checked = content, keys, now()
	return s, nil
}

// flagName names the setting that configures the file, for messages.
func (s *keySet) flagName() string {
	if s.jwks {
		return "--jwks-file"
	}
	return "--jwt-public-key-file"
}

// read reads and parses the file.
func (s *keySet) read() ([]byte, []publicKey, error) {
	content, err := os.ReadFile(s.path)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", s.flagName(), err)
	}
	keys, err := parseKeys(content, s.jwks)
	if err != nil {
		return nil, nil, fmt.Errorf("%s %s: %w", s.flagName(), s.path, err)
	}
	return content, keys, nil
}

// lookup returns the keys for a token signed with alg and carrying kid
// ("" when the token has none). A token with a kid gets the key of that
// id; a token without one gets every key of its algorithm. When the kid is
// unknown, the file is reread first, at most once per unknownKidReload.
func (s *keySet) lookup(alg, kid string) []publicKey {
	s.mu.Lock()
	defer s.mu.Unlock()

	now := s.now()
	if now.Sub(s.checked) >= s.interval {
		s.reload(now)
	}

	found := match(s.keys, alg, kid)
	if len(found) == 0 && kid != "" && now.Sub(s.checked) >= unknownKidReload {
		s.reload(now)
		found = match(s.keys, alg, kid)
	}
	return found
}

// reload rereads the file and swaps the keys when its content changed. The
// caller holds s.mu.
func (s *keySet) reload(now time.Time) {
	s.checked = now

	content, keys, err := s.read()
	if err != nil {
		if msg := err.Error(); msg != s.lastError {
			s.lastError = msg
			s.log.Warn("key file not reloaded; the previous keys stay in use", "file", s.path, "err", err)
		}
		return
	}
	s.lastError = ""
	if bytes.Equal(content, s.content) {
		return
	}
	s.content, s.keys = content, keys
	s.log.Info("key file reloaded", "file", s.path, "keys", len(keys))
}

func match(keys []publicKey, alg, kid string) []publicKey {
	var found []publicKey
	for _, k := range keys {
		// A key without an id, as in a PEM file, fits every kid.
		if k.alg == alg && (kid == "" || k.kid == "" || k.kid == kid) {
			found = append(found, k)
		}
	}
	return found
}

// parseKeys parses a JWKS document or PEM blocks of public keys or
// certificates. Private keys are accepted and reduced to their public part,
// though a key file should hold only public keys.
func parseKeys(content []byte, jwks bool) ([]publicKey, error) {
	set, err := jwk.Parse(content, jwk.WithPEM(!jwks))
	if err != nil {
		if jwks {
			return nil, fmt.Errorf("not a JSON Web Key Set: %w", err)
		}
		return nil, fmt.Errorf("not PEM-encoded public keys: %w", err)
	}
	if set.Len() == 0 {
		return nil, errors.New("holds no key")
	}

	keys := make([]publicKey, 0, set.Len())
	for i := range set.Len() {
		key, _ := set.Key(i)
		pk, err := convertKey(key)
		if err != nil {
			kid, _ := key.KeyID()
			return nil, fmt.Errorf("key %d (kid %q): %w", i, kid, err)
		}
		keys = append(keys, pk)
	}
	return keys, nil
}

// convertKey turns one JWK into a verification key, checking its type,
// size and declared algorithm and use.
func convertKey(key jwk.Key) (publicKey, error) {
	kid, _ := key.KeyID()
	if use, ok := key.KeyUsage(); ok && use != "sig" {
		return publicKey{}, fmt.Errorf(`"use" is %q: only signature keys ("sig") verify tokens`, use)
	}

	pub, err := jwk.PublicKeyOf(key)
	if err != nil {
		return publicKey{}, fmt.Errorf("not a public or private key of type RSA or EC: %w", err)
	}
	var raw any
	if err := jwk.Export(pub, &raw); err != nil {
		return publicKey{}, fmt.Errorf("unreadable key: %w", err)
	}

	pk := publicKey{kid: kid, key: raw}
	switch k := raw.(type) {
	case *rsa.PublicKey:
		if bits := k.N.BitLen(); bits < minRSABits {
			return publicKey{}, fmt.Errorf("RSA key of %d bits is too small: use %d bits or more", bits, minRSABits)
		}
		pk.alg = algRS256
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() {
			return publicKey{}, fmt.Errorf("EC key on curve %s is not supported: ES256 needs P-256", k.Curve.Params().Name)
		}
		pk.alg = algES256
	default:
		return publicKey{}, fmt.Errorf("key type %T is not supported: use RSA (RS256) or EC P-256 (ES256)", raw)
	}

	if alg, ok := key.Algorithm(); ok && alg.String() != pk.alg {
		return publicKey{}, fmt.Errorf(`"alg" is %q, but the key can verify only %s`, alg.String(), pk.alg)
	}
	return pk, nil
}
