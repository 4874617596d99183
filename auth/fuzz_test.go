package auth_test

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
	"unicode"

	"github.com/pgsidecar/sidecar/auth"
)

// fuzzSecret signs the valid tokens of the fuzz seeds. The tokens in
// testdata/fuzz/FuzzVerify were signed with it and expire in 2100.
var fuzzSecret = []byte("fuzz-secret-for-hs256-tokens-32b")

// hs256Header is the header that Sign writes, base64url-encoded:
// {"alg":"HS256","typ":"JWT"}.
const hs256Header = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"

// minQuotedSignature is the shortest signature part that an error message
// must not contain. Shorter ones may occur in the fixed wording by chance.
const minQuotedSignature = 12

// FuzzVerify checks Verify on arbitrary strings and on altered tokens. When
// payload is not empty, it replaces the payload of token, whose signature
// part is kept. When resign is true, the token is signed again with the
// secret, so that the fuzzer reaches the claim checks. Every accepted
// token must carry a valid HMAC-SHA256 of its first two parts, and every
// error must wrap ErrInvalidToken without quoting the signature. The seed
// corpus is in testdata/fuzz/FuzzVerify.
func FuzzVerify(f *testing.F) {
	verifier, err := auth.NewVerifier(auth.Config{HS256Secret: fuzzSecret})
	if err != nil {
		f.Fatalf("NewVerifier: %v", err)
	}

	valid, err := auth.Sign(fuzzSecret, "user-1", auth.Realtime{
		Subscribe: []string{"chat.>", "orders.*"},
		Publish:   []string{"chat.room1"},
		Call:      []string{"app.>"},
	}, time.Hour)
	if err != nil {
		f.Fatalf("Sign: %v", err)
	}
	other, err := auth.Sign([]byte("another secret"), "user-1", auth.Realtime{}, time.Hour)
	if err != nil {
		f.Fatalf("Sign: %v", err)
	}

	f.Add(valid, []byte(nil), false)
	f.Add(valid, []byte(nil), true)
	f.Add(other, []byte(nil), false)
	f.Add(valid, []byte(`{"sub":"admin","exp":4102444800,"realtime":{"subscribe":[">"]}}`), false)
	f.Add(valid, []byte(`{"sub":"admin","exp":4102444800,"realtime":{"subscribe":[">"]}}`), true)
	f.Add(valid, []byte(`{"sub":"a","sub":"b","exp":4102444800}`), true)
	f.Add(valid, []byte(`{"sub":"a\nb","exp":4102444800}`), true)
	f.Add(valid, []byte(`{"sub":"a","exp":1e400}`), true)
	f.Add("eyJhbGciOiJub25lIn0.eyJzdWIiOiJhIiwiZXhwIjo0MTAyNDQ0ODAwfQ.", []byte(nil), false)
	f.Add("", []byte(nil), false)
	f.Add("..", []byte(nil), true)
	f.Add("a.b.c.d", []byte(nil), false)

	f.Fuzz(func(t *testing.T, token string, payload []byte, resign bool) {
		if len(payload) > 0 {
			token = hs256Header + "." + base64.RawURLEncoding.EncodeToString(payload) + "." + signaturePart(token)
		}
		if resign {
			token = signHS256(token, fuzzSecret)
		}

		claims, err := verifier.Verify(token)
		if err != nil {
			checkVerifyError(t, token, claims, err)
			return
		}
		checkAccepted(t, token, claims)
	})
}

// checkVerifyError checks an error of Verify.
func checkVerifyError(t *testing.T, token string, claims *auth.Claims, err error) {
	t.Helper()

	if claims != nil {
		t.Errorf("Verify(%q) = %+v with error %v, want nil claims", token, claims, err)
	}
	if !errors.Is(err, auth.ErrInvalidToken) {
		t.Errorf("Verify(%q) error = %v, want it to wrap ErrInvalidToken", token, err)
	}
	if sig := signaturePart(token); len(sig) >= minQuotedSignature && strings.Contains(err.Error(), sig) {
		t.Errorf("Verify(%q) error %q contains the signature %q", token, err, sig)
	}
}

// checkAccepted checks that an accepted token has three parts, an HS256
// header and a valid signature made with fuzzSecret, and that the claims
// come from its payload.
func checkAccepted(t *testing.T, token string, claims *auth.Claims) {
	t.Helper()

	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		t.Fatalf("Verify accepted %q, which has %d parts, want 3", token, len(parts))
	}
	if !validSignature(parts, fuzzSecret) {
		t.Fatalf("Verify accepted %q, whose signature was not made with the secret", token)
	}

	var header struct {
		Alg string `json:"alg"`
	}
	if err := decodePart(parts[0], &header); err != nil || header.Alg != "HS256" {
		t.Errorf("Verify accepted %q with header alg %q (decode error %v), want HS256", token, header.Alg, err)
	}

	var payload struct {
		Sub string `json:"sub"`
	}
	if err := decodePart(parts[1], &payload); err != nil {
		t.Fatalf("Verify accepted %q, whose payload does not decode: %v", token, err)
	}
	if claims.Subject != payload.Sub || claims.Subject == "" {
		t.Errorf("Verify(%q).Subject = %q, want the non-empty sub claim %q", token, claims.Subject, payload.Sub)
	}
	if strings.ContainsFunc(claims.Subject, unicode.IsControl) {
		t.Errorf("Verify(%q).Subject = %q, want no control characters", token, claims.Subject)
	}
	if claims.Expires.Before(time.Now().Add(-auth.DefaultLeeway - time.Minute)) {
		t.Errorf("Verify(%q).Expires = %v, want a time that has not passed", token, claims.Expires)
	}
}

// signaturePart returns the text after the last '.' of token, or "".
func signaturePart(token string) string {
	i := strings.LastIndexByte(token, '.')
	if i < 0 {
		return ""
	}
	return token[i+1:]
}

// signHS256 replaces the signature part of token with the HMAC-SHA256 of
// the text before the last '.', or appends one when token has no '.'.
func signHS256(token string, secret []byte) string {
	input := token
	if i := strings.LastIndexByte(token, '.'); i >= 0 {
		input = token[:i]
	}
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(input))
	return input + "." + base64.RawURLEncoding.EncodeToString(mac.Sum(nil))
}

// validSignature reports whether parts[2] decodes, as golang-jwt decodes it
// by default, to the HMAC-SHA256 of parts[0] + "." + parts[1].
func validSignature(parts []string, secret []byte) bool {
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil {
		return false
	}
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(parts[0] + "." + parts[1]))
	return hmac.Equal(sig, mac.Sum(nil))
}

func decodePart(part string, v any) error {
	b, err := base64.RawURLEncoding.DecodeString(part)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, v)
}

// redactedNames are spellings of the access_token parameter that RedactURL
// documents as matched: unescaped, then compared case-insensitively.
var redactedNames = []string{
	"access_token",
	"ACCESS_TOKEN",
	"Access_Token",
	"access%5Ftoken",
	"access%5ftoken",
	"%61ccess_token",
	"%41CCESS%5FTOKEN",
}

// FuzzRequestToken checks BearerToken on arbitrary header values and
// RedactURL on arbitrary queries. Into the query it inserts the parameter
// name redactedNames[nameIndex] with token as value, between prefix and
// suffix. The separators are '&' or ';' as separatorBits selects. The seed
// corpus is in testdata/fuzz/FuzzRequestToken.
func FuzzRequestToken(f *testing.F) {
	f.Add("Bearer abc.def.ghi", "a=1", "b=2", "eyJhbGciOiJIUzI1NiJ9.e30.sig", uint8(0), uint8(0))
	f.Add("bearer   spaced  ", "access_token=x&access_token=y", "", "secret-token", uint8(3), uint8(1))
	f.Add("BEARER", "x=access_token%3Dz", "access_token", "t%26k=n", uint8(5), uint8(2))
	f.Add("Basic dXNlcjpwYXNz", "%zz=1;a", "access_token;=", "tok en+/?#", uint8(6), uint8(3))
	f.Add("Bearer\tx", "a=%00%ff", "=access_token", "\x00\xff\xfe", uint8(1), uint8(0))
	f.Add("", "", "", "", uint8(2), uint8(0))

	f.Fuzz(func(t *testing.T, header, prefix, suffix, token string, nameIndex, separatorBits uint8) {
		checkBearerToken(t, header)

		separators := "&;"
		first, second := separators[separatorBits&1], separators[separatorBits>>1&1]
		name := redactedNames[int(nameIndex)%len(redactedNames)]
		value := url.QueryEscape(token)
		rawQuery := prefix + string(first) + name + "=" + value + string(second) + suffix

		u := &url.URL{Path: "/v1/ws", RawQuery: rawQuery}
		out := auth.RedactURL(u)
		checkRedactedQuery(t, u, out)

		// The escaped value contains neither separator, so only a piece
		// of the query that was not redacted can bring it back.
		if value != "" && !strings.Contains(prefix, value) && !strings.Contains(suffix, value) &&
			!strings.Contains(u.EscapedPath(), value) && !strings.Contains("access_token=REDACTED", value) &&
			strings.Contains(out, value) {
			t.Errorf("RedactURL(%q) = %q, which contains the token %q", u.RequestURI(), out, value)
		}

		checkQueryKept(t, &url.URL{Path: "/v1/ws", RawQuery: prefix})
	})
}

// checkBearerToken checks BearerToken(header) against the Bearer syntax: a
// scheme compared case-insensitively, one space, then the token, with
// surrounding whitespace ignored.
func checkBearerToken(t *testing.T, header string) {
	t.Helper()

	token, ok := auth.BearerToken(header)
	scheme, _, _ := strings.Cut(strings.TrimSpace(header), " ")
	if want := strings.EqualFold(scheme, "Bearer"); ok != want {
		t.Errorf("BearerToken(%q) ok = %v, want %v", header, ok, want)
	}
	if !ok {
		if token != "" {
			t.Errorf("BearerToken(%q) = %q, false, want an empty token", header, token)
		}
		return
	}

	if token != strings.TrimSpace(token) {
		t.Errorf("BearerToken(%q) = %q, want no surrounding whitespace", header, token)
	}
	if !strings.Contains(header, token) {
		t.Errorf("BearerToken(%q) = %q, want a part of the header", header, token)
	}
	if again, ok := auth.BearerToken("bEaReR " + token); !ok || again != token {
		t.Errorf(`BearerToken("bEaReR %s") = %q, %v, want %q, true`, token, again, ok, token)
	}
}

// checkRedactedQuery parses the redacted request URI as a server would
// and checks that the only access_token value left is REDACTED.
func checkRedactedQuery(t *testing.T, u *url.URL, out string) {
	t.Helper()

	redacted, err := url.ParseRequestURI(out)
	if err != nil {
		return // a server could not have received this URI either
	}
	for _, v := range redacted.Query()["access_token"] {
		if v != "REDACTED" {
			t.Errorf("RedactURL(%q) = %q, which has access_token=%q", u.RequestURI(), out, v)
		}
	}

	r := &http.Request{URL: redacted, Header: http.Header{}}
	if token, ok := auth.TokenFromRequest(r); ok && token != "REDACTED" {
		t.Errorf("TokenFromRequest(%q) = %q after RedactURL, want REDACTED", out, token)
	}
}

// checkQueryKept checks that RedactURL returns the request URI unchanged
// when no parameter name spells access_token in ASCII. Names with other
// letters are skipped, because Unicode case folding maps some of them to
// ASCII letters.
func checkQueryKept(t *testing.T, u *url.URL) {
	t.Helper()

	unescaped, err := url.QueryUnescape(u.RawQuery)
	if err != nil || !isASCII(unescaped) || strings.Contains(strings.ToLower(unescaped), "access_token") {
		return
	}
	if got, want := auth.RedactURL(u), u.RequestURI(); got != want {
		t.Errorf("RedactURL(%q) = %q, want it unchanged", want, got)
	}
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}
