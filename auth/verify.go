package auth

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
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

// Config configures a Verifier. At least one of HS256Secret,
// PublicKeyFile and JWKSFile is required.
type Config struct {
	// HS256Secret is the shared secret of HS256 tokens; empty refuses them.
	HS256Secret []byte

	// PublicKeyFile is a PEM file of RSA or EC P-256 public keys (or
	// certificates) that verify RS256 and ES256 tokens.
	PublicKeyFile string

	// JWKSFile is a JSON Web Key Set of RSA or EC P-256 keys. A token whose
	// header names a "kid" is verified with that key only.
	JWKSFile string

	// ReloadInterval is how often the key files are reread; a file whose
	// content changed replaces the keys. A token with an unknown "kid" also
	// causes a reread, at most once a second. Zero means
	// DefaultReloadInterval.
	ReloadInterval time.Duration

	// Audience, when set, must be one of the token's "aud" values.
	Audience string

	// Issuer, when set, must equal the token's "iss".
	Issuer string

	// Leeway is the clock skew allowed when checking "exp" and "nbf". Zero
	// means DefaultLeeway, and a negative value means none.
	Leeway time.Duration

	// Now returns the current time. Nil means time.Now.
	Now func() time.Time

	// Logger receives key file reloads and reload failures. Nil discards.
	Logger *slog.Logger
}

// Verifier verifies client tokens. It is safe for concurrent use.
//
// It accepts HS256 tokens when a secret is configured and RS256 and ES256
// tokens when key files are, so "alg": "none" and every other algorithm
// are rejected. It requires "exp" and a non-empty "sub", enforces "exp"
// and "nbf" with the configured leeway, and checks "aud" and "iss" when
// configured. It does not check "iat".
type Verifier struct {
	secret []byte
	files  []*keySet
	algs   []string
	leeway time.Duration
	parser *jwt.Parser

	audience, issuer string // required values; empty checks nothing
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

// NewVerifier returns a Verifier for cfg. It fails when no key is
// configured, or when a key file cannot be read or holds a key of an
// unsupported type or size.
func NewVerifier(cfg Config) (*Verifier, error) {
	if len(cfg.HS256Secret) == 0 && cfg.PublicKeyFile == "" && cfg.JWKSFile == "" {
		return nil, errors.New("new token verifier: no key: set an HS256 secret, a public key file or a JWKS file")
	}

	now := cfg.Now
	if now == nil {
		now = time.Now
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	interval := cfg.ReloadInterval
	if interval <= 0 {
		interval = DefaultReloadInterval
	}
	leeway := cfg.Leeway
	switch {
	case leeway == 0:
		leeway = DefaultLeeway
	case leeway < 0:
		leeway = 0
	}

	v := &Verifier{secret: cfg.HS256Secret, leeway: leeway, audience: cfg.Audience, issuer: cfg.Issuer}
	if len(v.secret) > 0 {
		v.algs = append(v.algs, algHS256)
	}
	for _, f := range []struct {
		path string
		jwks bool
	}{{cfg.PublicKeyFile, false}, {cfg.JWKSFile, true}} {
		if f.path == "" {
			continue
		}
		set, err := loadKeySet(f.path, f.jwks, interval, now, log)
		if err != nil {
			return nil, fmt.Errorf("new token verifier: %w", err)
		}
		v.files = append(v.files, set)
	}
	if len(v.files) > 0 {
		v.algs = append(v.algs, algRS256, algES256)
	}

	opts := []jwt.ParserOption{
		// One token has one spelling: no padding bits or other slack in
		// its base64, so that a token string can be keyed on.
		jwt.WithStrictDecoding(),
		jwt.WithValidMethods(v.algs),
		jwt.WithExpirationRequired(),
		jwt.WithLeeway(leeway),
		jwt.WithTimeFunc(now),
	}
	if cfg.Audience != "" {
		opts = append(opts, jwt.WithAudience(cfg.Audience))
	}
	if cfg.Issuer != "" {
		opts = append(opts, jwt.WithIssuer(cfg.Issuer))
	}
	v.parser = jwt.NewParser(opts...)
	return v, nil
}

// Leeway returns the clock skew allowed when checking "exp" and "nbf". A
// session whose token expired ends only after it.
func (v *Verifier) Leeway() time.Duration { return v.leeway }

const algHS256 = "HS256"

// Verify checks the signature and claims of token and returns the rights
// it grants. Every error wraps ErrInvalidToken and names the fault: expired,
// not yet valid, invalid signature, algorithm not accepted, malformed, or
// the claim at fault, such as an invalid pattern in "realtime".
func (v *Verifier) Verify(token string) (*Claims, error) {
	if strings.ContainsFunc(token, unicode.IsSpace) {
		// Go's base64 skips line breaks, which would give one token
		// several spellings.
		return nil, fmt.Errorf("%w: token contains white space", ErrInvalidToken)
	}
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

// keyError is the error of key when no configured key fits the token. Its
// message is shown as is.
type keyError struct{ msg string }

func (e *keyError) Error() string { return e.msg }

// key returns the key or keys that may verify a token whose algorithm the
// parser already accepted. The type checks repeat that decision so that a
// change to the parser options cannot hand the HS256 secret to another
// algorithm, or a public key to HS256.
func (v *Verifier) key(t *jwt.Token) (any, error) {
	if _, ok := t.Header["crit"]; ok {
		// RFC 7515: extensions listed in "crit" must be understood, and
		// this verifier understands none.
		return nil, &keyError{`the "crit" header lists extensions this sidecar does not support`}
	}
	alg := t.Method.Alg()
	switch t.Method.(type) {
	case *jwt.SigningMethodHMAC:
		if alg != algHS256 || len(v.secret) == 0 {
			return nil, fmt.Errorf("algorithm %q is not accepted", alg)
		}
		return v.secret, nil
	case *jwt.SigningMethodRSA, *jwt.SigningMethodECDSA:
	default:
		return nil, fmt.Errorf("algorithm %q is not accepted", alg)
	}

	kid, _ := t.Header["kid"].(string)
	var set jwt.VerificationKeySet
	for _, f := range v.files {
		for _, k := range f.lookup(alg, kid) {
			set.Keys = append(set.Keys, k.key)
		}
	}
	if len(set.Keys) == 0 {
		if kid != "" {
			return nil, &keyError{fmt.Sprintf("unknown key id %.64q: no %s key has it", kid, alg)}
		}
		return nil, &keyError{fmt.Sprintf("no %s key is configured", alg)}
	}
	return set, nil
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
		if alg := tokenAlgorithm(parsed); !slices.Contains(v.algs, alg) {
			return fmt.Errorf("%w: signing algorithm %.20q is not accepted, only %s", ErrInvalidToken, alg, strings.Join(v.algs, ", "))
		}
		if ke := (*keyError)(nil); errors.As(err, &ke) {
			return fmt.Errorf("%w: %s", ErrInvalidToken, ke.msg)
		}
		if errors.Is(err, jwt.ErrTokenUnverifiable) {
			return fmt.Errorf("%w: %w", ErrInvalidToken, err)
		}
		return fmt.Errorf("%w: signature is invalid", ErrInvalidToken)

	case errors.Is(err, jwt.ErrTokenInvalidAudience):
		return fmt.Errorf(`%w: "aud" does not name this sidecar's audience`, ErrInvalidToken)

	case errors.Is(err, jwt.ErrTokenInvalidIssuer):
		return fmt.Errorf(`%w: "iss" is not the expected issuer`, ErrInvalidToken)

	case errors.Is(err, jwt.ErrTokenRequiredClaimMissing):
		name := "exp"
		switch {
		case tc.ExpiresAt != nil && v.audience != "" && len(tc.Audience) == 0:
			name = "aud"
		case tc.ExpiresAt != nil && v.issuer != "" && tc.Issuer == "":
			name = "iss"
		}
		return fmt.Errorf(`%w: missing %q claim`, ErrInvalidToken, name)

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
