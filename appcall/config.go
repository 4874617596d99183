package appcall

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"time"
)

// Defaults for the zero values of Config.
const (
	DefaultTimeout          = 10 * time.Second
	DefaultMaxResponseBytes = 16 << 20
)

// Default pool sizes of the HTTP client that New builds when Config.Client
// is nil. All calls go to one host, so most idle connections are kept for
// that host: a burst of up to 64 concurrent calls reuses its connections
// afterwards instead of dialling again.
const (
	defaultMaxIdleConns        = 128
	defaultMaxIdleConnsPerHost = 64
)

// Config configures a Forwarder. Only URL is required.
type Config struct {
	// URL is the application's JSON-RPC endpoint (--app-rpc-url), an
	// absolute http or https URL.
	URL string

	// Token, when not empty, is sent as "Authorization: Bearer <Token>"
	// (--app-rpc-token). It never appears in error messages or logs.
	Token string

	// Timeout bounds each call, from sending the request to reading the
	// whole response body. Zero means DefaultTimeout.
	Timeout time.Duration

	// MaxResponseBytes is the largest response body accepted. A larger body
	// fails the call with -32005. Zero means DefaultMaxResponseBytes.
	MaxResponseBytes int64

	// Client sends the requests. Nil means a client of the Forwarder's own,
	// with keep-alive connections and no redirects, whose idle connections
	// Forwarder.Close closes. A client passed here is used as it is and
	// Close leaves it alone. Its redirect policy applies, so a client that follows
	// redirects may send the token to the redirect's target.
	Client *http.Client

	// Logger receives failures that are not returned to anyone, such as
	// those of notifications, and a rate-limited record of call failures.
	// Nil discards them.
	Logger *slog.Logger
}

// New validates cfg and returns a Forwarder. Errors name the setting at
// fault, such as --app-rpc-url.
func New(cfg Config) (*Forwarder, error) {
	target, err := parseURL(cfg.URL)
	if err != nil {
		return nil, err
	}

	if !validHeaderValue(cfg.Token) {
		return nil, errors.New("invalid --app-rpc-token: it contains control characters, which cannot be sent in an HTTP header")
	}

	timeout := cfg.Timeout
	switch {
	case timeout < 0:
		return nil, fmt.Errorf("invalid application call timeout %s: it must be positive", timeout)
	case timeout == 0:
		timeout = DefaultTimeout
	}

	maxBytes := cfg.MaxResponseBytes
	switch {
	case maxBytes < 0:
		return nil, fmt.Errorf("invalid maximum application response size %d bytes: it must be positive", maxBytes)
	case maxBytes == 0:
		maxBytes = DefaultMaxResponseBytes
	}

	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}

	f := &Forwarder{
		url:      target.String(),
		shownURL: (&url.URL{Scheme: target.Scheme, Host: target.Host, Path: target.Path}).String(),
		token:    cfg.Token,
		timeout:  timeout,
		maxBytes: maxBytes,
		client:   cfg.Client,
		log:      logger,
	}
	if f.client == nil {
		f.client = newClient()
		f.ownsClient = true
	}
	return f, nil
}

// parseURL checks that raw is an absolute http or https URL. Its errors
// show the URL with any password replaced by "xxxxx".
func parseURL(raw string) (*url.URL, error) {
	if raw == "" {
		return nil, errors.New("--app-rpc-url is not set: application methods need the URL of the application's JSON-RPC endpoint")
	}

	u, err := url.Parse(raw)
	if err != nil {
		// url.Error repeats the whole URL, password included, so only its
		// cause is kept.
		var uerr *url.Error
		if errors.As(err, &uerr) {
			err = uerr.Err
		}
		return nil, fmt.Errorf("invalid --app-rpc-url: %w", err)
	}

	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("invalid --app-rpc-url %q: the scheme must be http or https", u.Redacted())
	}
	if u.Host == "" {
		return nil, fmt.Errorf("invalid --app-rpc-url %q: the URL has no host", u.Redacted())
	}
	return u, nil
}

// newClient returns a client with Go's default transport settings, larger
// idle pools and redirects turned off. A redirect response is then
// reported as a non-2xx status, and the token is never sent to another URL.
func newClient() *http.Client {
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.MaxIdleConns = defaultMaxIdleConns
	transport.MaxIdleConnsPerHost = defaultMaxIdleConnsPerHost

	return &http.Client{
		Transport: transport,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
}

// validHeaderValue reports whether s can be sent as an HTTP header value:
// no control characters other than horizontal tab. Go's transport rejects
// other values when sending.
func validHeaderValue(s string) bool {
	for i := range len(s) {
		c := s[i]
		if c < ' ' && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}
