package auth

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
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
// file otherwise. It fails when the file cannot be read, contains no usable
// key, or contains a private key.
func loadKeySet(path string, jwks bool, interval time.Duration, now func() time.Time, log *slog.Logger) (*keySet, error) {
	s := &keySet{path: path, jwks: jwks, interval: interval, now: now, log: log}

	content, err := s.readFile()
	if err != nil {
		return nil, err
	}
	keys, err := s.parse(content)
	if err != nil {
		return nil, err
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("%s %s: no key can verify RS256 or ES256 tokens (the log lists the skipped keys and why)", s.flagName(), path)
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

func (s *keySet) readFile() ([]byte, error) {
	content, err := os.ReadFile(s.path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", s.flagName(), err)
	}
	return content, nil
}

// parse parses content and logs each key it skips.
func (s *keySet) parse(content []byte) ([]publicKey, error) {
	keys, skipped, err := parseKeys(content, s.jwks)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", s.flagName(), s.path, err)
	}
	for _, reason := range skipped {
		s.log.Warn("key skipped: it cannot verify RS256 or ES256 tokens", "file", s.path, "key", reason)
	}
	return keys, nil
}

// lookup returns the keys for a token signed with alg and carrying kid
// ("" when the token has none). A token with a kid gets the key of that
// id, and a token without one gets every key of its algorithm. An unknown
// kid rereads the file first, unless the last read is more recent than
// unknownKidReload.
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

// reload rereads the file and, when its content changed, parses it and
// swaps the keys. A file that cannot be read or parsed keeps the previous
// keys, and each distinct error is logged once. The caller holds s.mu.
func (s *keySet) reload(now time.Time) {
	s.checked = now

	content, err := s.readFile()
	if err == nil && bytes.Equal(content, s.content) {
		s.lastError = ""
		return
	}
	var keys []publicKey
	if err == nil {
		keys, err = s.parse(content)
	}
	if err != nil {
		if msg := err.Error(); msg != s.lastError {
			s.lastError = msg
			s.log.Warn("key file not reloaded; the previous keys stay in use", "file", s.path, "err", err)
		}
		return
	}

	s.lastError = ""
	s.content, s.keys = content, keys
	if len(keys) == 0 {
		// An emptied file is how an operator withdraws every key at once.
		s.log.Warn("key file reloaded with no usable key: tokens are rejected until it contains keys again", "file", s.path)
		return
	}
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

// errPrivateKey marks a key file that holds a private key. It stops the
// sidecar rather than being skipped: the secret that mints tokens does not
// belong beside the verifier.
var errPrivateKey = errors.New("is a private key: give only the public key, for example the output of openssl pkey -in key.pem -pubout")

// parseKeys parses a JWKS document or the PEM blocks of public keys and
// certificates. A key that cannot verify RS256 or ES256 tokens (another
// type, curve or use, or too small) is skipped and described in skipped,
// because identity providers publish such keys beside their signing keys.
// A private key, or a file that is not of its format, is an error.
func parseKeys(content []byte, jwks bool) (keys []publicKey, skipped []string, err error) {
	if jwks {
		return parseJWKS(content)
	}
	return parsePEM(content)
}

func parseJWKS(content []byte) ([]publicKey, []string, error) {
	var doc struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(content, &doc); err != nil || doc.Keys == nil {
		return nil, nil, errors.New(`not a JSON Web Key Set: want a JSON object with a "keys" array (for a PEM file, use --jwt-public-key-file)`)
	}

	var keys []publicKey
	var skipped []string
	for i, raw := range doc.Keys {
		key, err := jwk.ParseKey(raw)
		if err != nil {
			skipped = append(skipped, fmt.Sprintf("key %d: not a valid JSON Web Key (%v)", i, err))
			continue
		}
		kid, _ := key.KeyID()
		pk, err := convertKey(key)
		if errors.Is(err, errPrivateKey) {
			return nil, nil, fmt.Errorf("key %d (kid %q) %w", i, kid, err)
		}
		if err != nil {
			skipped = append(skipped, fmt.Sprintf("key %d (kid %q): %v", i, kid, err))
			continue
		}
		keys = append(keys, pk)
	}
	return keys, skipped, nil
}

func parsePEM(content []byte) ([]publicKey, []string, error) {
	var keys []publicKey
	var skipped []string
	blocks := 0
	for rest := content; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		blocks++

		var raw any
		var err error
		switch block.Type {
		case "PUBLIC KEY":
			raw, err = x509.ParsePKIXPublicKey(block.Bytes)
		case "RSA PUBLIC KEY":
			raw, err = x509.ParsePKCS1PublicKey(block.Bytes)
		case "CERTIFICATE":
			var cert *x509.Certificate
			if cert, err = x509.ParseCertificate(block.Bytes); err == nil {
				raw = cert.PublicKey
			}
		case "PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY", "ENCRYPTED PRIVATE KEY":
			return nil, nil, fmt.Errorf("PEM block %d (%s) %w", blocks, block.Type, errPrivateKey)
		default:
			skipped = append(skipped, fmt.Sprintf("PEM block %d: type %q is not a public key or certificate", blocks, block.Type))
			continue
		}
		if err != nil {
			skipped = append(skipped, fmt.Sprintf("PEM block %d (%s): unreadable: %v", blocks, block.Type, err))
			continue
		}

		pk, err := checkKey(raw)
		if err != nil {
			skipped = append(skipped, fmt.Sprintf("PEM block %d (%s): %v", blocks, block.Type, err))
			continue
		}
		keys = append(keys, pk)
	}
	if blocks == 0 {
		return nil, nil, errors.New("no PEM block found: want -----BEGIN PUBLIC KEY----- blocks (for a JSON Web Key Set, use --jwks-file)")
	}
	return keys, skipped, nil
}

// convertKey turns one JWK into a verification key, checking its type,
// size and declared algorithm and use.
func convertKey(key jwk.Key) (publicKey, error) {
	if use, ok := key.KeyUsage(); ok && use != "sig" {
		return publicKey{}, fmt.Errorf(`"use" is %q: only signature keys ("sig") verify tokens`, use)
	}

	var raw any
	if err := jwk.Export(key, &raw); err != nil {
		return publicKey{}, fmt.Errorf("unreadable key: %w", err)
	}
	switch raw.(type) {
	case *rsa.PrivateKey, *ecdsa.PrivateKey, ed25519.PrivateKey:
		return publicKey{}, errPrivateKey
	}

	pk, err := checkKey(raw)
	if err != nil {
		return publicKey{}, err
	}
	pk.kid, _ = key.KeyID()
	if alg, ok := key.Algorithm(); ok && alg.String() != pk.alg {
		return publicKey{}, fmt.Errorf(`"alg" is %q, but the key can verify only %s`, alg.String(), pk.alg)
	}
	return pk, nil
}

// checkKey accepts RSA keys of at least minRSABits for RS256 and P-256
// keys for ES256.
func checkKey(raw any) (publicKey, error) {
	switch k := raw.(type) {
	case *rsa.PublicKey:
		if bits := k.N.BitLen(); bits < minRSABits {
			return publicKey{}, fmt.Errorf("RSA key of %d bits is too small: use %d bits or more", bits, minRSABits)
		}
		return publicKey{alg: algRS256, key: k}, nil
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() {
			return publicKey{}, fmt.Errorf("EC key on curve %s is not supported: ES256 needs P-256", k.Curve.Params().Name)
		}
		return publicKey{alg: algES256, key: k}, nil
	case []byte:
		return publicKey{}, errors.New("symmetric (oct) keys are not supported: use --jwt-secret for HS256")
	default:
		return publicKey{}, errors.New("key type is not supported: use RSA (RS256) or EC P-256 (ES256)")
	}
}
