package auth

import (
	"net/http"
	"net/url"
	"strings"
)

// tokenParam is the query parameter that carries a client token where a
// browser cannot set headers, as on a websocket upgrade.
const tokenParam = "access_token"

// TokenFromRequest returns the client token of r. An Authorization header
// with the Bearer scheme (in any case) wins over the access_token query
// parameter. Other schemes in the header are ignored.
//
// ok is true whenever a token was presented, even an empty one, so that a
// client that tried to authenticate is rejected instead of being treated as
// anonymous.
func TokenFromRequest(r *http.Request) (token string, ok bool) {
	if token, ok := BearerToken(r.Header.Get("Authorization")); ok {
		return token, true
	}

	values, ok := r.URL.Query()[tokenParam]
	if !ok || len(values) == 0 {
		return "", false
	}
	return values[0], true
}

// BearerToken returns the credentials of an Authorization header value
// that uses the Bearer scheme, compared case-insensitively. ok is false for
// any other scheme and for an empty header.
func BearerToken(header string) (token string, ok bool) {
	scheme, rest, _ := strings.Cut(strings.TrimSpace(header), " ")
	if !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	return strings.TrimSpace(rest), true
}

// RedactURL returns the request URI of u (path and query) for logs, with
// the value of every access_token parameter replaced by "REDACTED". The
// parameter name is matched after unescaping and case-insensitively, and
// both '&' and ';' count as separators, so that no spelling that a server
// might accept leaks a token. The other parameters are kept as they are.
func RedactURL(u *url.URL) string {
	if u.RawQuery == "" {
		return u.RequestURI()
	}

	var query strings.Builder
	rest := u.RawQuery
	for {
		i := strings.IndexAny(rest, "&;")
		param := rest
		if i >= 0 {
			param = rest[:i]
		}
		query.WriteString(redactParam(param))
		if i < 0 {
			break
		}
		query.WriteByte(rest[i])
		rest = rest[i+1:]
	}

	redacted := *u
	redacted.RawQuery = query.String()
	return redacted.RequestURI()
}

// redactParam returns one name=value pair of a raw query, with the value
// replaced when the name is access_token.
func redactParam(param string) string {
	name, _, _ := strings.Cut(param, "=")
	if unescaped, err := url.QueryUnescape(name); err == nil {
		name = unescaped
	}
	if !strings.EqualFold(strings.TrimSpace(name), tokenParam) {
		return param
	}
	return tokenParam + "=REDACTED"
}
