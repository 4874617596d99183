package listen

import "regexp"

// Patterns that can carry a password in a connection string: the userinfo
// of a URL and password or sslpassword keys, quoted or not, in key/value or
// query form.
var (
	urlPasswordRE = regexp.MustCompile(`(://[^:@/\s]*):[^@\s]*@`)
	keyPasswordRE = regexp.MustCompile(`(?i)(password\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&'"]+)`)
)

// redact masks anything in msg that looks like a password in a connection
// string. pgx already masks passwords in its own errors, but only as a best
// effort, and a Connect function may wrap errors that quote a DSN verbatim.
func redact(msg string) string {
	msg = urlPasswordRE.ReplaceAllString(msg, "$1:xxxxx@")
	msg = keyPasswordRE.ReplaceAllString(msg, "${1}xxxxx")
	return msg
}

// redactedError shows err's message with passwords masked and keeps err
// reachable through errors.Is and errors.As.
type redactedError struct{ err error }

func (e *redactedError) Error() string { return redact(e.err.Error()) }
func (e *redactedError) Unwrap() error { return e.err }
