package auth

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/lestrrat-go/jwx/v3/jwk"
)

// testKeys are generated once: RSA key generation takes a noticeable time
// under the race detector.
var testKeys = sync.OnceValue(func() (k struct {
	rsa1, rsa2 *rsa.PrivateKey
	ec1, ec2   *ecdsa.PrivateKey
	ecP384     *ecdsa.PrivateKey
	rsaSmall   *rsa.PrivateKey
},
) {
	must := func(err error) {
		if err != nil {
			panic(err)
		}
	}
	var err error
	k.rsa1, err = rsa.GenerateKey(rand.Reader, 2048)
	must(err)
	k.rsa2, err = rsa.GenerateKey(rand.Reader, 2048)
	must(err)
	k.rsaSmall, err = rsa.GenerateKey(rand.Reader, 1024)
	must(err)
	k.ec1, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	must(err)
	k.ec2, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	must(err)
	k.ecP384, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	must(err)
	return k
})

// pemFile writes the public parts of keys as PEM "PUBLIC KEY" blocks.
func pemFile(t *testing.T, keys ...any) string {
	t.Helper()
	var out []byte
	for _, k := range keys {
		der, err := x509.MarshalPKIXPublicKey(k)
		if err != nil {
			t.Fatalf("marshal public key: %v", err)
		}
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})...)
	}
	return writeFile(t, "keys.pem", out)
}

// jwks returns a JSON Web Key Set of the public keys, each under its kid.
func jwks(t *testing.T, keys map[string]any, extra map[string]map[string]any) []byte {
	t.Helper()
	set := jwk.NewSet()
	for kid, raw := range keys {
		key, err := jwk.Import(raw)
		if err != nil {
			t.Fatalf("import key %s: %v", kid, err)
		}
		if err := key.Set(jwk.KeyIDKey, kid); err != nil {
			t.Fatalf("set kid: %v", err)
		}
		for name, value := range extra[kid] {
			if err := key.Set(name, value); err != nil {
				t.Fatalf("set %s: %v", name, err)
			}
		}
		if err := set.AddKey(key); err != nil {
			t.Fatalf("add key: %v", err)
		}
	}
	out, err := json.Marshal(set)
	if err != nil {
		t.Fatalf("marshal key set: %v", err)
	}
	return out
}

func writeFile(t *testing.T, name string, content []byte) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, content, 0o600); err != nil {
		t.Fatalf("write %s: %v", name, err)
	}
	return path
}

func signKid(t *testing.T, method jwt.SigningMethod, key any, kid string, claims jwt.MapClaims) string {
	t.Helper()
	tok := jwt.NewWithClaims(method, claims)
	if kid != "" {
		tok.Header["kid"] = kid
	}
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatalf("sign %s token: %v", method.Alg(), err)
	}
	return s
}

func TestVerifyPublicKeyFile(t *testing.T) {
	k := testKeys()
	file := pemFile(t, &k.rsa1.PublicKey, &k.ec1.PublicKey)
	v, err := NewVerifier(Config{PublicKeyFile: file, Now: func() time.Time { return testNow }})
	if err != nil {
		t.Fatalf("NewVerifier: %v", err)
	}

	accepted := map[string]string{
		"RS256":                signKid(t, jwt.SigningMethodRS256, k.rsa1, "", validClaims()),
		"ES256":                signKid(t, jwt.SigningMethodES256, k.ec1, "", validClaims()),
		"RS256 with any kid":   signKid(t, jwt.SigningMethodRS256, k.rsa1, "whatever", validClaims()),
		"ES256 signed with ec": signKid(t, jwt.SigningMethodES256, k.ec1, "", validClaims()),
	}
	for name, token := range accepted {
		if c, err := v.Verify(token); err != nil || c.Subject != "user-1" {
			t.Errorf("Verify(%s) = %v, %v; want user-1", name, c, err)
		}
	}

	pubPEM, _ := os.ReadFile(file)
	refused := []struct {
		name, token, want string
	}{
		{"RS256 by another key", signKid(t, jwt.SigningMethodRS256, k.rsa2, "", validClaims()), "signature is invalid"},
		{"ES256 by another key", signKid(t, jwt.SigningMethodES256, k.ec2, "", validClaims()), "signature is invalid"},
		{"HS256 without a secret", sign(t, jwt.SigningMethodHS256, testSecret, validClaims()), `signing algorithm "HS256" is not accepted, only RS256, ES256`},
		// The classic confusion: the public key's bytes used as an HMAC secret.
		{"HS256 keyed with the public key file", sign(t, jwt.SigningMethodHS256, pubPEM, validClaims()), `"HS256" is not accepted`},
		{"RS384", signKid(t, jwt.SigningMethodRS384, k.rsa1, "", validClaims()), `"RS384" is not accepted`},
		{"PS256", signKid(t, jwt.SigningMethodPS256, k.rsa1, "", validClaims()), `"PS256" is not accepted`},
		{"alg none", sign(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, validClaims()), `"none" is not accepted`},
		{"expired", signKid(t, jwt.SigningMethodES256, k.ec1, "", jwt.MapClaims{"sub": "a", "exp": testNow.Add(-time.Hour).Unix()}), "expired at"},
	}
	for _, tt := range refused {
		c, err := v.Verify(tt.token)
		if err == nil || !errors.Is(err, ErrInvalidToken) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Verify(%s) = %v, %v; want ErrInvalidToken containing %q", tt.name, c, err, tt.want)
		}
	}
}

func TestVerifyJWKSChoosesKeyByKid(t *testing.T) {
	k := testKeys()
	file := writeFile(t, "jwks.json", jwks(t, map[string]any{
		"rsa-1": &k.rsa1.PublicKey,
		"rsa-2": &k.rsa2.PublicKey,
		"ec-1":  &k.ec1.PublicKey,
	}, nil))
	v, err := NewVerifier(Config{JWKSFile: file, Now: func() time.Time { return testNow }})
	if err != nil {
		t.Fatalf("NewVerifier: %v", err)
	}

	tests := []struct {
		name  string
		token string
		want  string // "" for accepted
	}{
		{"rsa-1", signKid(t, jwt.SigningMethodRS256, k.rsa1, "rsa-1", validClaims()), ""},
		{"rsa-2", signKid(t, jwt.SigningMethodRS256, k.rsa2, "rsa-2", validClaims()), ""},
		{"ec-1", signKid(t, jwt.SigningMethodES256, k.ec1, "ec-1", validClaims()), ""},
		{"no kid tries every key of the algorithm", signKid(t, jwt.SigningMethodRS256, k.rsa2, "", validClaims()), ""},
		{"kid of another key", signKid(t, jwt.SigningMethodRS256, k.rsa2, "rsa-1", validClaims()), "signature is invalid"},
		{"kid of a key of another algorithm", signKid(t, jwt.SigningMethodRS256, k.rsa1, "ec-1", validClaims()), `unknown key id "ec-1": no RS256 key has it`},
		{"unknown kid", signKid(t, jwt.SigningMethodES256, k.ec2, "ec-9", validClaims()), `unknown key id "ec-9"`},
		{"unknown kid, long", signKid(t, jwt.SigningMethodES256, k.ec2, strings.Repeat("k", 500), validClaims()), `unknown key id "kkkk`},
	}
	for _, tt := range tests {
		c, err := v.Verify(tt.token)
		switch {
		case tt.want == "" && err != nil:
			t.Errorf("Verify(%s) = %v, want accepted", tt.name, err)
		case tt.want != "" && (err == nil || !errors.Is(err, ErrInvalidToken) || !strings.Contains(err.Error(), tt.want)):
			t.Errorf("Verify(%s) = %v, %v; want ErrInvalidToken containing %q", tt.name, c, err, tt.want)
		case err != nil && len(err.Error()) > 200:
			t.Errorf("Verify(%s) error is %d bytes long: a long kid must be cut", tt.name, len(err.Error()))
		}
	}
}

func TestVerifyReloadsChangedKeyFile(t *testing.T) {
	k := testKeys()
	now := testNow
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	claims := func() jwt.MapClaims {
		return jwt.MapClaims{"sub": "a", "exp": clock().Add(time.Hour).Unix()}
	}

	file := writeFile(t, "jwks.json", jwks(t, map[string]any{"old": &k.ec1.PublicKey}, nil))
	v, err := NewVerifier(Config{JWKSFile: file, ReloadInterval: time.Minute, Now: clock})
	if err != nil {
		t.Fatalf("NewVerifier: %v", err)
	}
	oldToken := signKid(t, jwt.SigningMethodES256, k.ec1, "old", claims())

	// Rotation: the new key is added, then the old one removed.
	rewrite := func(keys map[string]any) {
		if err := os.WriteFile(file, jwks(t, keys, nil), 0o600); err != nil {
			t.Fatalf("rewrite key file: %v", err)
		}
	}
	rewrite(map[string]any{"old": &k.ec1.PublicKey, "new": &k.ec2.PublicKey})
	advance(2 * time.Second) // past the unknown-kid reread limit
	if _, err := v.Verify(signKid(t, jwt.SigningMethodES256, k.ec2, "new", claims())); err != nil {
		t.Fatalf("Verify(token of a key added to the file) = %v, want accepted: an unknown kid rereads the file", err)
	}

	rewrite(map[string]any{"new": &k.ec2.PublicKey})
	if _, err := v.Verify(oldToken); err != nil {
		t.Fatalf("Verify(old token) before the reload interval = %v, want accepted", err)
	}
	advance(time.Minute)
	if _, err := v.Verify(oldToken); err == nil || !strings.Contains(err.Error(), `unknown key id "old"`) {
		t.Fatalf("Verify(old token) after its key left the file = %v, want unknown key id", err)
	}

	// A broken file keeps the keys that were in use.
	if err := os.WriteFile(file, []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	advance(time.Minute)
	if _, err := v.Verify(signKid(t, jwt.SigningMethodES256, k.ec2, "new", claims())); err != nil {
		t.Fatalf("Verify after the file broke = %v, want the previous keys kept", err)
	}
}

func TestVerifyAudienceAndIssuer(t *testing.T) {
	v, err := NewVerifier(Config{
		HS256Secret: testSecret,
		Audience:    "realtime",
		Issuer:      "https://auth.example.com",
		Now:         func() time.Time { return testNow },
	})
	if err != nil {
		t.Fatalf("NewVerifier: %v", err)
	}
	with := func(pairs ...any) jwt.MapClaims {
		c := validClaims()
		for i := 0; i < len(pairs); i += 2 {
			c[pairs[i].(string)] = pairs[i+1]
		}
		return c
	}
	tests := []struct {
		name   string
		claims jwt.MapClaims
		want   string
	}{
		{"both right", with("aud", "realtime", "iss", "https://auth.example.com"), ""},
		{"audience in a list", with("aud", []string{"api", "realtime"}, "iss", "https://auth.example.com"), ""},
		{"no audience", with("iss", "https://auth.example.com"), `missing "aud" claim`},
		{"other audience", with("aud", "api", "iss", "https://auth.example.com"), `"aud" does not name`},
		{"no issuer", with("aud", "realtime"), `missing "iss" claim`},
		{"other issuer", with("aud", "realtime", "iss", "https://evil.example.com"), `"iss" is not the expected issuer`},
	}
	for _, tt := range tests {
		_, err := v.Verify(sign(t, jwt.SigningMethodHS256, testSecret, tt.claims))
		if tt.want == "" && err != nil {
			t.Errorf("Verify(%s) = %v, want accepted", tt.name, err)
		}
		if tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)) {
			t.Errorf("Verify(%s) = %v, want error containing %q", tt.name, err, tt.want)
		}
	}
}

func TestNewVerifierRefusesUnusableKeyFiles(t *testing.T) {
	k := testKeys()
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"missing file", Config{JWKSFile: filepath.Join(t.TempDir(), "absent.json")}, "--jwks-file: open"},
		{"not JSON", Config{JWKSFile: writeFile(t, "a.json", []byte("hello"))}, `not a JSON Web Key Set: want a JSON object with a "keys" array`},
		{"PEM given as JWKS", Config{JWKSFile: pemFile(t, &k.ec1.PublicKey)}, "use --jwt-public-key-file"},
		{"JWKS given as PEM", Config{PublicKeyFile: writeFile(t, "g.json", jwks(t, map[string]any{"e": &k.ec1.PublicKey}, nil))}, "use --jwks-file"},
		{"empty set", Config{JWKSFile: writeFile(t, "b.json", []byte(`{"keys": []}`))}, "no key can verify RS256 or ES256 tokens"},
		{"not PEM", Config{PublicKeyFile: writeFile(t, "c.pem", []byte("hello"))}, "no PEM block found"},
		{"only a small RSA key", Config{PublicKeyFile: pemFile(t, &k.rsaSmall.PublicKey)}, "no key can verify RS256 or ES256 tokens"},
		{"only a P-384 key", Config{PublicKeyFile: pemFile(t, &k.ecP384.PublicKey)}, "no key can verify RS256 or ES256 tokens"},
		{"only a symmetric key", Config{JWKSFile: writeFile(t, "d.json", []byte(`{"keys":[{"kty":"oct","kid":"s","k":"c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0"}]}`))}, "no key can verify RS256 or ES256 tokens"},
		{"private key in PEM", Config{PublicKeyFile: privatePEM(t, k.ec1)}, "PEM block 1 (PRIVATE KEY) is a private key"},
		{"private key in JWKS", Config{JWKSFile: writeFile(t, "h.json", jwks(t, map[string]any{"p": k.ec1}, nil))}, `key 0 (kid "p") is a private key`},
	}
	for _, tt := range tests {
		_, err := NewVerifier(tt.cfg)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("NewVerifier(%s) = %v, want error containing %q", tt.name, err, tt.want)
		}
	}
}

func privatePEM(t *testing.T, key any) string {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatalf("marshal private key: %v", err)
	}
	return writeFile(t, "private.pem", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
}

// Identity providers publish encryption keys and keys of other algorithms
// beside their signing keys: those are skipped, the rest are used.
func TestKeyFileSkipsKeysItCannotUse(t *testing.T) {
	k := testKeys()
	file := writeFile(t, "jwks.json", jwks(t, map[string]any{
		"enc":   &k.rsa1.PublicKey,
		"rs512": &k.rsa2.PublicKey,
		"p384":  &k.ecP384.PublicKey,
		"sig":   &k.ec1.PublicKey,
	}, map[string]map[string]any{"enc": {"use": "enc"}, "rs512": {"alg": "RS512"}}))
	v, err := NewVerifier(Config{JWKSFile: file, Now: func() time.Time { return testNow }})
	if err != nil {
		t.Fatalf("NewVerifier = %v, want the usable key loaded", err)
	}
	if _, err := v.Verify(signKid(t, jwt.SigningMethodES256, k.ec1, "sig", validClaims())); err != nil {
		t.Errorf("Verify(token of the usable key) = %v, want accepted", err)
	}
	if _, err := v.Verify(signKid(t, jwt.SigningMethodRS256, k.rsa1, "enc", validClaims())); err == nil {
		t.Errorf("Verify(token signed with an encryption key) accepted, want refused")
	}
}

func TestEmptiedKeyFileWithdrawsKeys(t *testing.T) {
	k := testKeys()
	now := testNow
	file := writeFile(t, "jwks.json", jwks(t, map[string]any{"a": &k.ec1.PublicKey}, nil))
	v, err := NewVerifier(Config{JWKSFile: file, ReloadInterval: time.Minute, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	tok := signKid(t, jwt.SigningMethodES256, k.ec1, "a", validClaims())
	if _, err := v.Verify(tok); err != nil {
		t.Fatalf("Verify before = %v", err)
	}

	if err := os.WriteFile(file, []byte(`{"keys": []}`), 0o600); err != nil {
		t.Fatal(err)
	}
	now = now.Add(time.Minute)
	if _, err := v.Verify(tok); err == nil {
		t.Fatal("Verify after the key file was emptied accepted the token, want refused")
	}
}

func TestCritHeaderRefused(t *testing.T) {
	v := newTestVerifier(t, 0)
	tok := jwt.NewWithClaims(jwt.SigningMethodHS256, validClaims())
	tok.Header["crit"] = []string{"exp-policy"}
	signedTok, err := tok.SignedString(testSecret)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(signedTok); err == nil || !strings.Contains(err.Error(), `"crit"`) {
		t.Fatalf("Verify(token with crit) = %v, want refused naming crit", err)
	}
}

func TestUnchangedKeyFileIsNotParsedAgain(t *testing.T) {
	k := testKeys()
	file := writeFile(t, "jwks.json", jwks(t, map[string]any{
		"enc": &k.rsa1.PublicKey,
		"sig": &k.ec1.PublicKey,
	}, map[string]map[string]any{"enc": {"use": "enc"}}))
	var logs bytes.Buffer
	now := testNow
	v, err := NewVerifier(Config{
		JWKSFile:       file,
		ReloadInterval: time.Minute,
		Now:            func() time.Time { return now },
		Logger:         slog.New(slog.NewTextHandler(&logs, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}

	tok := signKid(t, jwt.SigningMethodES256, k.ec1, "sig", validClaims())
	for range 3 {
		now = now.Add(time.Minute)
		if _, err := v.Verify(tok); err != nil {
			t.Fatalf("Verify = %v", err)
		}
	}
	if got := strings.Count(logs.String(), "key skipped"); got != 1 {
		t.Errorf("the skipped key was logged %d times over 3 rereads of an unchanged file, want once:\n%s", got, logs.String())
	}
}
