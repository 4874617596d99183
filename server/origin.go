package server

import (
	"fmt"
	"net/http"
	"net/url"
	"path"
	"strings"
)

// originAllowed applies the allowed-origins rules to a websocket upgrade: a
// request without an Origin header (not a browser) passes, so does one whose
// Origin names the host it was sent to, and so does one that matches an
// entry of --allowed-origins.
func (s *Server) originAllowed(r *http.Request) bool {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return true
	}
	u, err := url.Parse(origin)
	if err != nil || u.Host == "" {
		return false
	}
	if strings.EqualFold(u.Host, r.Host) {
		return true
	}

	return s.originListed(u)
}

// originListed reports whether an entry of --allowed-origins matches u's
// scheme://host[:port].
func (s *Server) originListed(u *url.URL) bool {
	full := strings.ToLower(u.Scheme + "://" + u.Host)
	for _, pattern := range s.originPatterns {
		if ok, _ := path.Match(strings.ToLower(pattern), full); ok {
			return true
		}
	}
	return false
}

// corsOrigin is the CORS rule of the HTTP API: only the origins of
// --allowed-origins get CORS headers. Same-origin requests need none.
func (s *Server) corsOrigin(origin string) (bool, error) {
	u, err := url.Parse(origin)
	if err != nil || u.Host == "" {
		return false, nil
	}
	return s.originListed(u), nil
}

// checkOrigins validates the entries of --allowed-origins: each is a full
// origin, scheme://host with an optional :port, where * may stand for one
// host label or for the port.
func checkOrigins(origins []string) error {
	for _, o := range origins {
		scheme, host, ok := strings.Cut(o, "://")
		if !ok || (scheme != "http" && scheme != "https") || host == "" || strings.ContainsAny(host, "/?#") {
			return fmt.Errorf("--allowed-origins entry %q is not an origin: write scheme://host[:port], such as https://app.example.com, https://*.example.com or http://localhost:*", o)
		}
		if _, err := path.Match(o, ""); err != nil {
			return fmt.Errorf("--allowed-origins entry %q: %w", o, err)
		}
	}
	return nil
}
