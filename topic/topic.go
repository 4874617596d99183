// Package topic implements the sidecar's topic and pattern grammar.
//
// A topic is 1 to 255 bytes of segments separated by '.', where a segment
// is one or more of A-Z a-z 0-9 _ - : /. Topics are case-sensitive.
//
// A pattern is a topic in which a segment may be '*' (exactly one segment)
// and the last segment may be '>' (one or more trailing segments).
//
// Topics whose first segment is db, pg, presence or sys are reserved for
// events the sidecar produces itself. A pattern matches a reserved topic
// only when its first segment names the namespace literally, so '>' and
// '*.>' never match db.public.users.
package topic

import (
	"errors"
	"fmt"
	"strings"
)

// MaxLen is the maximum length of a topic or pattern in bytes.
const MaxLen = 255

// Errors returned by Validate and Parse. The returned errors wrap them with
// the offending value.
var (
	ErrEmpty    = errors.New("topic is empty")
	ErrTooLong  = errors.New("topic is longer than 255 bytes")
	ErrSegment  = errors.New("topic segment is empty or has a character outside A-Z a-z 0-9 _ - : /")
	ErrWildcard = errors.New("wildcard not allowed here")
)

// reserved lists the namespaces that only the sidecar publishes to.
var reserved = map[string]bool{"db": true, "pg": true, "presence": true, "sys": true}

// IsReserved reports whether topic lies in a reserved namespace.
func IsReserved(topic string) bool {
	first, _, _ := strings.Cut(topic, ".")
	return reserved[first]
}

// Validate reports whether s is a concrete topic, one that can be published.
func Validate(s string) error {
	if err := checkLen(s); err != nil {
		return err
	}

	for seg := range strings.SplitSeq(s, ".") {
		if seg == "*" || seg == ">" {
			return fmt.Errorf("topic %q: %w: publishing needs a concrete topic", s, ErrWildcard)
		}
		if !validSegment(seg) {
			return fmt.Errorf("topic %q: %w", s, ErrSegment)
		}
	}
	return nil
}

func checkLen(s string) error {
	if s == "" {
		return ErrEmpty
	}
	if len(s) > MaxLen {
		return fmt.Errorf("topic %.40q...: %w", s, ErrTooLong)
	}
	return nil
}

func validSegment(seg string) bool {
	if seg == "" {
		return false
	}
	for i := 0; i < len(seg); i++ {
		if !segmentByte[seg[i]] {
			return false
		}
	}
	return true
}

var segmentByte = func() (t [256]bool) {
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
	}
	for c := 'A'; c <= 'Z'; c++ {
		t[c] = true
	}
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for _, c := range "_-:/" {
		t[c] = true
	}
	return t
}()

// Sanitize returns name with every byte outside a segment's characters,
// '.' included, replaced by '_'. It maps Postgres schema, table and channel
// names onto single topic segments. An empty name becomes "_".
func Sanitize(name string) string {
	if name == "" {
		return "_"
	}
	b := []byte(name)
	for i, c := range b {
		if !segmentByte[c] {
			b[i] = '_'
		}
	}
	return string(b)
}

// Pattern is a parsed subscription or permission pattern. The zero value is
// not valid; use Parse. A Pattern is immutable and safe for concurrent use.
type Pattern struct {
	raw  string
	segs []string
	// wild is true when a segment is '*' or '>'.
	wild bool
}

// Parse validates s as a pattern.
func Parse(s string) (Pattern, error) {
	if err := checkLen(s); err != nil {
		return Pattern{}, err
	}

	segs := strings.Split(s, ".")
	p := Pattern{raw: s, segs: segs}
	for i, seg := range segs {
		switch {
		case seg == "*":
			p.wild = true
		case seg == ">":
			if i != len(segs)-1 {
				return Pattern{}, fmt.Errorf("pattern %q: %w: '>' may only be the last segment", s, ErrWildcard)
			}
			p.wild = true
		case !validSegment(seg):
			return Pattern{}, fmt.Errorf("pattern %q: %w", s, ErrSegment)
		}
	}
	return p, nil
}

// MustParse is Parse for patterns known to be valid; it panics otherwise.
func MustParse(s string) Pattern {
	p, err := Parse(s)
	if err != nil {
		panic(err)
	}
	return p
}

// String returns the pattern as it was parsed.
func (p Pattern) String() string { return p.raw }

// IsLiteral reports whether the pattern has no wildcard, so that it matches
// exactly one topic: its own text.
func (p Pattern) IsLiteral() bool { return !p.wild }

// Match reports whether the pattern matches the concrete topic t.
// It does not allocate.
func (p Pattern) Match(t string) bool {
	if !p.wild {
		return p.raw == t
	}

	rest := t
	for i, seg := range p.segs {
		if rest == "" && i > 0 {
			return false
		}
		var cur string
		cur, rest, _ = strings.Cut(rest, ".")
		if i == 0 && (seg == "*" || seg == ">") && reserved[cur] {
			return false
		}
		switch seg {
		case ">":
			return true
		case "*":
		default:
			if seg != cur {
				return false
			}
		}
		if i == len(p.segs)-1 {
			return rest == "" && !strings.HasSuffix(t, ".")
		}
		if rest == "" {
			return false
		}
	}
	return false
}

// Contains reports whether every topic that q can match is matched by p.
// This is the rule by which a claim pattern allows a subscription pattern:
// "orders.>" contains "orders.*", but "orders.*" does not contain "orders.>".
func (p Pattern) Contains(q Pattern) bool {
	for i, ps := range p.segs {
		if i >= len(q.segs) {
			return false
		}
		qs := q.segs[i]

		// A wildcard in the first segment never reaches a reserved
		// namespace, so it cannot cover a pattern that names one.
		if i == 0 && (ps == "*" || ps == ">") && reserved[qs] {
			return false
		}

		switch ps {
		case ">":
			return true
		case "*":
			if qs == ">" {
				return false
			}
		default:
			if qs != ps {
				return false
			}
		}
	}
	return len(q.segs) == len(p.segs)
}

// Set is a list of patterns, such as the subscribe patterns of one claim.
type Set []Pattern

// ParseSet parses each of ss; it fails on the first invalid pattern.
func ParseSet(ss []string) (Set, error) {
	set := make(Set, 0, len(ss))
	for _, s := range ss {
		p, err := Parse(s)
		if err != nil {
			return nil, err
		}
		set = append(set, p)
	}
	return set, nil
}

// Allows reports whether some pattern of the set contains q.
func (s Set) Allows(q Pattern) bool {
	for _, p := range s {
		if p.Contains(q) {
			return true
		}
	}
	return false
}

// AllowsTopic reports whether some pattern of the set matches topic t.
func (s Set) AllowsTopic(t string) bool {
	for _, p := range s {
		if p.Match(t) {
			return true
		}
	}
	return false
}
