package auth

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode"

	"github.com/golang-jwt/jwt/v5"

	"github.com/pgsidecar/sidecar/topic"
)

// ErrInvalidToken is wrapped by every error that Verify returns. The
// wrapping error states why the token is invalid, without quoting the token.
var ErrInvalidToken = errors.New("invalid token")

// DefaultLeeway is the clock skew allowed by default when checking "exp" and
// "nbf".
const DefaultLeeway = 30 * time.Second

// Config configures a Verifier.
type Config struct {
	// HS256Secret is the shared secret of HS256 tokens. It is required.
	HS256Secret []byte

	// Leeway is the clock skew allowed when checking "exp" and "nbf". Zero
	// means DefaultLeeway, and a negative value means none.
	Leeway time.Duration

	// Now returns the current time. Nil means time.Now.
	Now func() time.Time
}

// Verifier verifies client tokens. It is safe for concurrent use.
//
// It accepts only HS256 tokens signed with the configured secret, so
// "alg": "none" and every other algorithm are rejected. It requires "exp"
// and a non-empty "sub", and enforces "exp" and "nbf". It does not check
// "aud", "iss" or "iat".
type Verifier struct {
	secret []byte
	parser *jwt.Parser
}

// Realtime is the "realtime" claim: the patterns a client may subscribe
// and publish to, the application methods it may call (as "app.<name>"
// patterns) and its presence patterns. A missing or null list grants
// nothing.
type Realtime struct {
	Subscribe []string `json:"subscribe,omitempty"`
	Publish   []string `json:"publish,omitempty"`
	Call      []string `json:"call,omitempty"`
	Presence  []string `json:"presence,omitempty"`
}

// tokenClaims is the payload as Verify decodes it. Realtime stays raw until
// the signature is verified, so that its faults get their own messages.
type tokenClaims struct {
	jwt.RegisteredClaims
	Realtime json.RawMessage `json:"realtime"`
}

// signedClaims is the payload that Sign writes.
type signedClaims struct {
	jwt.RegisteredClaims
	Realtime Realtime `json:"realtime"`
}

const algorithm = "HS256"

// NewVerifier returns a Verifier for cfg. It fails when the secret is
// empty.
func NewVerifier(cfg Config) (*Verifier, error) {
	if len(cfg.HS256Secret) == 0 {
		return nil, errors.New("new token verifier: the HS256 secret is empty")
	}

	leeway := cfg.Leeway
	switch {
	case leeway == 0:
		leeway = DefaultLeeway
	case leeway < 0:
		leeway = 0
	}

	opts := []jwt.ParserOption{
		jwt.WithValidMethods([]string{algorithm}),
		jwt.WithExpirationRequired(),
		jwt.WithLeeway(leeway),
	}
	if cfg.Now != nil {
		opts = append(opts, jwt.WithTimeFunc(cfg.Now))
	}

	return &Verifier{
		secret: cfg.HS256Secret,
		parser: jwt.NewParser(opts...),
	}, nil
}

// Verify checks the signature and claims of token and returns the rights
// it grants. Every error wraps ErrInvalidToken and names the fault: expired,
// not yet valid, invalid signature, algorithm not accepted, malformed, or
// the claim at fault, such as an invalid pattern in "realtime".
func (v *Verifier) Verify(token string) (*Claims, error) {
	var tc tokenClaims
	parsed, err := v.parser.ParseWithClaims(token, &tc, v.key)
	if err != nil {
		return nil, v.parseError(parsed, &tc, err)
	}

	if tc.Subject == "" {
		return nil, fmt.Errorf(`%w: missing "sub" claim`, ErrInvalidToken)
	}
	if strings.ContainsFunc(tc.Subject, unicode.IsControl) {
		// The subject goes into logs and into an HTTP header of
		// application calls, where a line break would be invalid.
		return nil, fmt.Errorf(`%w: "sub" claim contains a control character`, ErrInvalidToken)
	}

	c := &Claims{
		Subject: tc.Subject,
		Expires: tc.ExpiresAt.Time,
	}
	if err := decodeRealtime(tc.Realtime, c); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidToken, err)
	}
	return c, nil
}

// key returns the secret for a token whose algorithm the parser already
// accepted. The type check repeats that decision so that a change to the
// parser options cannot hand the secret to another algorithm.
func (v *Verifier) key(t *jwt.Token) (any, error) {
	if _, ok := t.Method.(*jwt.SigningMethodHMAC); !ok {
		return nil, fmt.Errorf("algorithm %q is not HMAC", t.Method.Alg())
	}
	return v.secret, nil
}

// parseError turns an error from jwt.Parser into one that states why the
// token is invalid. The jwt messages are kept only for malformed tokens,
// where they name the part that could not be decoded.
func (v *Verifier) parseError(parsed *jwt.Token, tc *tokenClaims, err error) error {
	switch {
	case errors.Is(err, jwt.ErrTokenMalformed):
		// The string claims (sub, iss, jti) are the only fields of
		// tokenClaims that report a type error, so name the claim.
		var typeErr *json.UnmarshalTypeError
		if errors.As(err, &typeErr) && typeErr.Field != "" {
			name := typeErr.Field[strings.LastIndexByte(typeErr.Field, '.')+1:]
			return fmt.Errorf("%w: malformed claim %q: must be a string, not a JSON %s", ErrInvalidToken, name, typeErr.Value)
		}
		return fmt.Errorf("%w: %w", ErrInvalidToken, err) // "token is malformed: ..."

	case errors.Is(err, jwt.ErrTokenUnverifiable), errors.Is(err, jwt.ErrTokenSignatureInvalid):
		if alg := tokenAlgorithm(parsed); alg != algorithm {
			return fmt.Errorf("%w: signing algorithm %.20q is not accepted, only %s", ErrInvalidToken, alg, algorithm)
		}
		if errors.Is(err, jwt.ErrTokenUnverifiable) {
			return fmt.Errorf("%w: %w", ErrInvalidToken, err)
		}
		return fmt.Errorf("%w: signature is invalid", ErrInvalidToken)

	case errors.Is(err, jwt.ErrTokenRequiredClaimMissing):
		return fmt.Errorf(`%w: missing "exp" claim`, ErrInvalidToken)

	case errors.Is(err, jwt.ErrTokenExpired):
		return fmt.Errorf("%w: expired at %s", ErrInvalidToken, formatDate(tc.ExpiresAt))

	case errors.Is(err, jwt.ErrTokenNotValidYet):
		return fmt.Errorf("%w: not valid before %s", ErrInvalidToken, formatDate(tc.NotBefore))

	default:
		return fmt.Errorf("%w: %w", ErrInvalidToken, err)
	}
}

// tokenAlgorithm returns the "alg" header of a token that failed to parse,
// or "" when it could not be read.
func tokenAlgorithm(t *jwt.Token) string {
	if t == nil {
		return ""
	}
	alg, _ := t.Header["alg"].(string)
	return alg
}

func formatDate(d *jwt.NumericDate) string {
	if d == nil {
		return "an unknown time"
	}
	return d.UTC().Format(time.RFC3339)
}

// decodeRealtime parses the "realtime" claim into the pattern sets of c.
// An absent or null claim grants nothing.
func decodeRealtime(raw json.RawMessage, c *Claims) error {
	if len(raw) == 0 || string(raw) == "null" {
		return nil
	}
	if raw[0] != '{' {
		return errors.New(`malformed claim "realtime": must be an object`)
	}

	var rt Realtime
	if err := json.Unmarshal(raw, &rt); err != nil {
		var typeErr *json.UnmarshalTypeError
		if errors.As(err, &typeErr) && typeErr.Field != "" {
			return fmt.Errorf(`malformed claim "realtime.%s": must be an array of strings`, typeErr.Field)
		}
		return fmt.Errorf(`malformed claim "realtime": %w`, err)
	}

	lists := []struct {
		name     string
		patterns []string
		set      *topic.Set
	}{
		{"subscribe", rt.Subscribe, &c.Subscribe},
		{"publish", rt.Publish, &c.Publish},
		{"call", rt.Call, &c.Call},
		{"presence", rt.Presence, &c.Presence},
	}
	for _, list := range lists {
		set, err := topic.ParseSet(list.patterns)
		if err != nil {
			return fmt.Errorf(`claim "realtime.%s": %w`, list.name, err)
		}
		*list.set = set
	}
	return nil
}

// Sign returns an HS256 token for subject sub with the rights rt, valid
// from now for ttl. It is meant for tests and local development, where the
// sidecar mints tokens itself. It fails when ttl is not positive, because
// Verify requires "exp".
func Sign(secret []byte, sub string, rt Realtime, ttl time.Duration) (string, error) {
	if ttl <= 0 {
		return "", fmt.Errorf("sign token: ttl %s is not positive", ttl)
	}

	now := time.Now()
	claims := signedClaims{
		RegisteredClaims: jwt.RegisteredClaims{
			Subject:   sub,
			IssuedAt:  jwt.NewNumericDate(now),
			ExpiresAt: jwt.NewNumericDate(now.Add(ttl)),
		},
		Realtime: rt,
	}
	signed, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString(secret)
	if err != nil {
		return "", fmt.Errorf("sign token: %w", err)
	}
	return signed, nil
}
