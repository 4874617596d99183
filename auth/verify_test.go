package auth

import (
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/google/go-cmp/cmp"

	"github.com/pgsidecar/sidecar/topic"
)

var (
	testSecret = []byte("test-secret-of-at-least-32-bytes!")
	testNow    = time.Date(2026, 12, 4, 10, 0, 0, 0, time.UTC)
)

func newTestVerifier(t *testing.T, leeway time.Duration) *Verifier {
	t.Helper()
	v, err := NewVerifier(Config{
		HS256Secret: testSecret,
		Leeway:      leeway,
		Now:         func() time.Time { return testNow },
	})
	if err != nil {
		t.Fatalf("NewVerifier: %v", err)
	}
	return v
}

func sign(t *testing.T, method jwt.SigningMethod, key any, claims jwt.MapClaims) string {
	t.Helper()
	token, err := jwt.NewWithClaims(method, claims).SignedString(key)
	if err != nil {
		t.Fatalf("sign %s token: %v", method.Alg(), err)
	}
	return token
}

// validClaims returns claims that the test verifier accepts.
func validClaims() jwt.MapClaims {
	return jwt.MapClaims{
		"sub": "user-1",
		"exp": testNow.Add(time.Hour).Unix(),
		"realtime": map[string]any{
			"subscribe": []string{"orders.>", "chat.*"},
			"publish":   []string{"chat.*"},
			"call":      []string{"app.orders.*"},
			"presence":  []string{"rooms.*"},
		},
	}
}

func patternStrings(s topic.Set) []string {
	out := []string{}
	for _, p := range s {
		out = append(out, p.String())
	}
	return out
}

func TestVerifyValidToken(t *testing.T) {
	v := newTestVerifier(t, 0)
	token := sign(t, jwt.SigningMethodHS256, testSecret, validClaims())

	c, err := v.Verify(token)
	if err != nil {
		t.Fatalf("Verify(valid token) = %v, want nil", err)
	}

	if c.Subject != "user-1" {
		t.Errorf("Subject = %q, want %q", c.Subject, "user-1")
	}
	if want := testNow.Add(time.Hour); !c.Expires.Equal(want) {
		t.Errorf("Expires = %v, want %v", c.Expires, want)
	}
	if c.Anonymous {
		t.Errorf("Anonymous = true, want false")
	}
	if diff := cmp.Diff(patternStrings(c.Subscribe), []string{"orders.>", "chat.*"}); diff != "" {
		t.Errorf("Subscribe mismatch (-got +want):\n%s", diff)
	}
	if diff := cmp.Diff(patternStrings(c.Publish), []string{"chat.*"}); diff != "" {
		t.Errorf("Publish mismatch (-got +want):\n%s", diff)
	}
	if diff := cmp.Diff(patternStrings(c.Call), []string{"app.orders.*"}); diff != "" {
		t.Errorf("Call mismatch (-got +want):\n%s", diff)
	}
	if diff := cmp.Diff(patternStrings(c.Presence), []string{"rooms.*"}); diff != "" {
		t.Errorf("Presence mismatch (-got +want):\n%s", diff)
	}
}

func TestVerifyRejects(t *testing.T) {
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatalf("generate RSA key: %v", err)
	}

	with := func(key string, value any) jwt.MapClaims {
		c := validClaims()
		c[key] = value
		return c
	}
	without := func(key string) jwt.MapClaims {
		c := validClaims()
		delete(c, key)
		return c
	}
	hs256 := func(c jwt.MapClaims) string { return sign(t, jwt.SigningMethodHS256, testSecret, c) }

	tests := []struct {
		name  string
		token string
		want  string // a substring of the error message
	}{
		{"expired", hs256(with("exp", testNow.Add(-time.Hour).Unix())), "invalid token: expired at 2026-12-04T09:00:00Z"},
		{"expired beyond leeway", hs256(with("exp", testNow.Add(-31*time.Second).Unix())), "invalid token: expired at"},
		{"not yet valid", hs256(with("nbf", testNow.Add(time.Hour).Unix())), "invalid token: not valid before 2026-12-04T11:00:00Z"},
		{"wrong secret", sign(t, jwt.SigningMethodHS256, []byte("another secret"), validClaims()), "invalid token: signature is invalid"},
		{"alg none", sign(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, validClaims()), `invalid token: signing algorithm "none" is not accepted, only HS256`},
		{"RS256", sign(t, jwt.SigningMethodRS256, rsaKey, validClaims()), `invalid token: signing algorithm "RS256" is not accepted`},
		{"HS512 with the same secret", sign(t, jwt.SigningMethodHS512, testSecret, validClaims()), `invalid token: signing algorithm "HS512" is not accepted`},
		{"unknown algorithm", unsignedToken(`{"alg":"XX999","typ":"JWT"}`, `{"sub":"a"}`), `invalid token: signing algorithm "XX999" is not accepted`},
		{"missing exp", hs256(without("exp")), `invalid token: missing "exp" claim`},
		{"missing sub", hs256(without("sub")), `invalid token: missing "sub" claim`},
		{"empty sub", hs256(with("sub", "")), `invalid token: missing "sub" claim`},
		{"sub not a string", hs256(with("sub", 42)), `invalid token: malformed claim "sub": must be a string, not a JSON number`},
		{"iss not a string", hs256(with("iss", []string{"a"})), `invalid token: malformed claim "iss": must be a string, not a JSON array`},
		{"sub with a line break", hs256(with("sub", "a\nX-Admin: 1")), `invalid token: "sub" claim contains a control character`},
		{"exp not a number", hs256(with("exp", "tomorrow")), "invalid token: token is malformed"},
		{"bad subscribe pattern", hs256(with("realtime", map[string]any{"subscribe": []string{"orders.>", "orders..x"}})), `invalid token: claim "realtime.subscribe": pattern "orders..x"`},
		{"bad publish pattern", hs256(with("realtime", map[string]any{"publish": []string{"a.>.b"}})), `invalid token: claim "realtime.publish": pattern "a.>.b"`},
		{"bad call pattern", hs256(with("realtime", map[string]any{"call": []string{"app orders"}})), `invalid token: claim "realtime.call": pattern "app orders"`},
		{"bad presence pattern", hs256(with("realtime", map[string]any{"presence": []string{""}})), `invalid token: claim "realtime.presence": topic is empty`},
		{"realtime not an object", hs256(with("realtime", []string{"orders.>"})), `invalid token: malformed claim "realtime": must be an object`},
		{"list not an array", hs256(with("realtime", map[string]any{"subscribe": "orders.>"})), `invalid token: malformed claim "realtime.subscribe": must be an array of strings`},
		{"list of numbers", hs256(with("realtime", map[string]any{"publish": []int{1}})), `invalid token: malformed claim "realtime.publish": must be an array of strings`},
		{"garbage", "not-a-token", "invalid token: token is malformed"},
		{"empty", "", "invalid token: token is malformed"},
		{"bad signature encoding", hs256(validClaims()) + "!", "invalid token:"},
	}
	v := newTestVerifier(t, 0)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := v.Verify(tt.token)
			if err == nil {
				t.Fatalf("Verify = %+v, want error containing %q", c, tt.want)
			}
			if !errors.Is(err, ErrInvalidToken) {
				t.Errorf("Verify error %q does not wrap ErrInvalidToken", err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Verify error = %q, want it to contain %q", err, tt.want)
			}
			if c != nil {
				t.Errorf("Verify claims = %+v, want nil", c)
			}
			if parts := strings.Split(tt.token, "."); len(parts) == 3 && parts[2] != "" && strings.Contains(err.Error(), parts[2]) {
				t.Errorf("Verify error %q contains the token's signature", err)
			}
		})
	}
}

// unsignedToken builds a token from JSON header and payload with an empty
// signature, for algorithms that golang-jwt cannot sign with.
func unsignedToken(header, payload string) string {
	enc := base64.RawURLEncoding
	return enc.EncodeToString([]byte(header)) + "." + enc.EncodeToString([]byte(payload)) + "."
}

func TestVerifyLeeway(t *testing.T) {
	tests := []struct {
		name   string
		leeway time.Duration
		exp    time.Time
		nbf    time.Time
		wantOK bool
	}{
		{"default leeway covers expiry 10s ago", 0, testNow.Add(-10 * time.Second), time.Time{}, true},
		{"default leeway ends after 30s", 0, testNow.Add(-31 * time.Second), time.Time{}, false},
		{"default leeway covers nbf 10s ahead", 0, testNow.Add(time.Hour), testNow.Add(10 * time.Second), true},
		{"negative leeway means none", -1, testNow.Add(-time.Second), time.Time{}, false},
		{"negative leeway accepts exp ahead", -1, testNow.Add(time.Second), time.Time{}, true},
		{"longer leeway", 2 * time.Minute, testNow.Add(-time.Minute), time.Time{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			claims := validClaims()
			claims["exp"] = tt.exp.Unix()
			if !tt.nbf.IsZero() {
				claims["nbf"] = tt.nbf.Unix()
			}

			_, err := newTestVerifier(t, tt.leeway).Verify(sign(t, jwt.SigningMethodHS256, testSecret, claims))
			if gotOK := err == nil; gotOK != tt.wantOK {
				t.Errorf("Verify = %v, want ok %v", err, tt.wantOK)
			}
		})
	}
}

func TestVerifyMissingListsGrantNothing(t *testing.T) {
	const absent = "absent"
	tests := []struct {
		name     string
		realtime any
	}{
		{"no realtime claim", absent},
		{"null claim", nil},
		{"empty claim", map[string]any{}},
		{"null lists", map[string]any{"subscribe": nil, "publish": nil}},
		{"empty lists", map[string]any{"subscribe": []string{}, "publish": []string{}, "call": []string{}}},
		{"unknown list only", map[string]any{"admin": []string{">"}}},
	}
	v := newTestVerifier(t, 0)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			claims := validClaims()
			claims["realtime"] = tt.realtime
			if tt.realtime == absent {
				delete(claims, "realtime")
			}

			c, err := v.Verify(sign(t, jwt.SigningMethodHS256, testSecret, claims))
			if err != nil {
				t.Fatalf("Verify = %v, want nil", err)
			}
			if c.CanSubscribe(topic.MustParse("orders.1")) {
				t.Errorf("CanSubscribe(orders.1) = true, want false")
			}
			if c.CanPublish("orders.1") {
				t.Errorf("CanPublish(orders.1) = true, want false")
			}
			if c.CanCall("app.orders.create") {
				t.Errorf("CanCall(app.orders.create) = true, want false")
			}
			if len(c.Presence) != 0 {
				t.Errorf("Presence = %v, want empty", patternStrings(c.Presence))
			}
		})
	}
}

func TestNewVerifierNeedsAKey(t *testing.T) {
	if _, err := NewVerifier(Config{}); err == nil {
		t.Errorf("NewVerifier(no key) = nil error, want an error")
	}
}

func TestSignThenVerify(t *testing.T) {
	rt := Realtime{Subscribe: []string{"orders.>"}, Publish: []string{"chat.*"}}
	token, err := Sign(testSecret, "dev", rt, time.Hour)
	if err != nil {
		t.Fatalf("Sign: %v", err)
	}

	v, err := NewVerifier(Config{HS256Secret: testSecret})
	if err != nil {
		t.Fatalf("NewVerifier: %v", err)
	}
	c, err := v.Verify(token)
	if err != nil {
		t.Fatalf("Verify(Sign(...)) = %v, want nil", err)
	}

	if c.Subject != "dev" {
		t.Errorf("Subject = %q, want %q", c.Subject, "dev")
	}
	if until := time.Until(c.Expires); until < 58*time.Minute || until > time.Hour {
		t.Errorf("Expires in %v, want about 1h", until)
	}
	if diff := cmp.Diff(patternStrings(c.Subscribe), rt.Subscribe); diff != "" {
		t.Errorf("Subscribe mismatch (-got +want):\n%s", diff)
	}
	if diff := cmp.Diff(patternStrings(c.Publish), rt.Publish); diff != "" {
		t.Errorf("Publish mismatch (-got +want):\n%s", diff)
	}
	if len(c.Call) != 0 || len(c.Presence) != 0 {
		t.Errorf("Call, Presence = %v, %v, want both empty", patternStrings(c.Call), patternStrings(c.Presence))
	}
}

func TestSignRejectsNonPositiveTTL(t *testing.T) {
	for _, ttl := range []time.Duration{0, -time.Second} {
		if _, err := Sign(testSecret, "dev", Realtime{}, ttl); err == nil {
			t.Errorf("Sign(ttl %v) = nil error, want an error", ttl)
		}
	}
}

func TestVerifyRefusesOtherSpellings(t *testing.T) {
	v := newTestVerifier(t, 0)
	tok := sign(t, jwt.SigningMethodHS256, testSecret, validClaims())
	dot := strings.LastIndexByte(tok, '.')

	// The last base64 character of a 32-byte signature carries 4 unused
	// bits; flipping one of them changes the string, not the bytes.
	last := tok[len(tok)-1]
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	i := strings.IndexByte(alphabet, last)
	slack := tok[:len(tok)-1] + string(alphabet[i^1])

	for name, variant := range map[string]string{
		"unused bits set":         slack,
		"line break in signature": tok[:dot+5] + "\r\n" + tok[dot+5:],
		"space in payload":        strings.Replace(tok, ".", ". ", 1),
	} {
		if _, err := v.Verify(variant); err == nil {
			t.Errorf("Verify(%s) accepted, want refused: a token has one spelling", name)
		}
	}
	if _, err := v.Verify(tok); err != nil {
		t.Fatalf("Verify(original) = %v", err)
	}
}
