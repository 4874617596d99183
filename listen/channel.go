package listen

import (
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
)

// MaxChannelLen is the maximum length of a channel name in bytes. Postgres
// truncates longer identifiers in LISTEN with only a notice, while
// pg_notify rejects them, so a longer name would silently never match.
const MaxChannelLen = 63

// ErrInvalidChannel is wrapped by the errors that ValidateChannel returns.
var ErrInvalidChannel = errors.New("invalid channel name")

// ValidateChannel reports whether name can be used as a LISTEN channel:
// 1 to MaxChannelLen bytes of valid UTF-8 without NUL. Case is significant
// and kept: the Listener always quotes the name, so "Orders" and "orders"
// are different channels, as they are for pg_notify.
//
// The length is counted in UTF-8 bytes, which is what Postgres counts in a
// UTF8 database.
func ValidateChannel(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("%w: empty", ErrInvalidChannel)
	case len(name) > MaxChannelLen:
		return fmt.Errorf("%w %q: %d bytes, the maximum is %d", ErrInvalidChannel, name, len(name), MaxChannelLen)
	case strings.IndexByte(name, 0) >= 0:
		return fmt.Errorf("%w %q: contains a NUL byte", ErrInvalidChannel, name)
	case !utf8.ValidString(name):
		return fmt.Errorf("%w %q: not valid UTF-8", ErrInvalidChannel, name)
	}

	return nil
}
