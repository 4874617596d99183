package topic_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/pgsidecar/sidecar/topic"
)

// reservedNamespaces are the first segments that only the sidecar
// publishes to, as the package documentation lists them.
var reservedNamespaces = []string{"db", "pg", "presence", "sys"}

// postgresMaxIdentifier is the maximum length in bytes of a Postgres
// identifier or channel name with the default NAMEDATALEN of 64.
const postgresMaxIdentifier = 63

// FuzzPattern checks the grammar and the matching rules on arbitrary
// strings. It parses a and b as patterns, tries topicName as a topic and
// sanitizes a. The seed corpus is in testdata/fuzz/FuzzPattern.
func FuzzPattern(f *testing.F) {
	seeds := [][3]string{
		{"orders.>", "orders.*", "orders.42"},
		{"chat.*", "chat.>", "chat.room1.typing"},
		{">", "*.>", "db.public.users"},
		{"*", "*", "sys"},
		{"*.*", "a.b", "presence.a"},
		{"db.>", "db.public.*", "db.public.orders"},
		{"a.b.c", "a.b.c", "a.b.c"},
		{"a.>.b", "a..b", "a.b."},
		{"a.*.>", "a.>", "a.x"},
		{"", ".", "..."},
		{"A-Z_0:9/x", "a-z", "A-Z_0:9/x"},
		{"my table", "é.ü", "a\x00b"},
		{"\xff\xfe", "a.\xc3\x28", "\x00"},
		{strings.Repeat("x", 64), strings.Repeat("y.", 127) + "y", strings.Repeat("z", 255)},
		{strings.Repeat("x", 256), strings.Repeat("*.", 127) + ">", strings.Repeat("z.", 128)},
	}
	for _, s := range seeds {
		f.Add(s[0], s[1], s[2])
	}

	f.Fuzz(func(t *testing.T, a, b, topicName string) {
		checkSanitize(t, a)

		pa, aErr := checkParse(t, a)
		pb, bErr := checkParse(t, b)

		set, setErr := topic.ParseSet([]string{a, b})
		if (setErr != nil) != (aErr != nil || bErr != nil) {
			t.Errorf("ParseSet(%q, %q) error = %v, want an error exactly when Parse fails (%v, %v)", a, b, setErr, aErr, bErr)
		}
		if aErr != nil || bErr != nil {
			return
		}

		if !pa.Contains(pa) {
			t.Errorf("%q.Contains(itself) = false, want true", a)
		}
		checkContains(t, pa, pb)
		checkContains(t, pb, pa)
		if got, want := set.Allows(pb), pa.Contains(pb) || pb.Contains(pb); got != want {
			t.Errorf("Set{%q, %q}.Allows(%q) = %v, want %v", a, b, b, got, want)
		}

		if topic.Validate(topicName) != nil {
			return
		}
		for _, tn := range topicVariants(topicName) {
			checkMatch(t, pa, tn)
			checkMatch(t, pb, tn)
			if pa.Contains(pb) && pb.Match(tn) && !pa.Match(tn) {
				t.Errorf("%q contains %q, which matches %q, but %q does not match it", a, b, tn, a)
			}
			if got, want := set.AllowsTopic(tn), pa.Match(tn) || pb.Match(tn); got != want {
				t.Errorf("Set{%q, %q}.AllowsTopic(%q) = %v, want %v", a, b, tn, got, want)
			}
		}
	})
}

// checkParse parses s and checks that Parse and Validate agree: a topic is
// exactly a pattern without wildcards.
func checkParse(t *testing.T, s string) (topic.Pattern, error) {
	t.Helper()

	p, err := topic.Parse(s)
	validateErr := topic.Validate(s)
	if err != nil {
		if !isGrammarError(err) {
			t.Errorf("Parse(%q) = %v, want an error wrapping one of the package's errors", s, err)
		}
		if validateErr == nil {
			t.Errorf("Validate(%q) = nil, but Parse fails with %v", s, err)
		}
		return p, err
	}

	if validateErr != nil && !isGrammarError(validateErr) {
		t.Errorf("Validate(%q) = %v, want an error wrapping one of the package's errors", s, validateErr)
	}
	if got := p.String(); got != s {
		t.Errorf("Parse(%q).String() = %q, want the input", s, got)
	}
	if len(s) > topic.MaxLen {
		t.Errorf("Parse accepted %d bytes, want at most %d", len(s), topic.MaxLen)
	}
	if p.IsLiteral() != (validateErr == nil) {
		t.Errorf("Parse(%q).IsLiteral() = %v, but Validate = %v", s, p.IsLiteral(), validateErr)
	}
	return p, nil
}

func isGrammarError(err error) bool {
	return errors.Is(err, topic.ErrEmpty) || errors.Is(err, topic.ErrTooLong) ||
		errors.Is(err, topic.ErrSegment) || errors.Is(err, topic.ErrWildcard)
}

// checkSanitize checks that Sanitize maps any name onto one topic segment
// of the same length. Only names up to MaxLen bytes fit in a topic, and
// Postgres names (at most 63 bytes) fit with the "pg." prefix.
func checkSanitize(t *testing.T, name string) {
	t.Helper()

	got := topic.Sanitize(name)
	wantLen := max(len(name), 1)
	if len(got) != wantLen {
		t.Errorf("len(Sanitize(%q)) = %d, want %d", name, len(got), wantLen)
	}
	if strings.Contains(got, ".") {
		t.Errorf("Sanitize(%q) = %q, want a single segment without '.'", name, got)
	}

	err := topic.Validate(got)
	switch {
	case len(got) <= topic.MaxLen && err != nil:
		t.Errorf("Validate(Sanitize(%q)) = %v, want nil", name, err)
	case len(got) > topic.MaxLen && !errors.Is(err, topic.ErrTooLong):
		t.Errorf("Validate(Sanitize(%d bytes)) = %v, want %v", len(name), err, topic.ErrTooLong)
	}

	if len(name) <= postgresMaxIdentifier {
		channel := "pg." + got
		if err := topic.Validate(channel); err != nil {
			t.Errorf("Validate(%q) = %v, want nil", channel, err)
		}
		if !topic.IsReserved(channel) {
			t.Errorf("IsReserved(%q) = false, want true", channel)
		}
	}
}

// checkMatch compares p.Match(tn) for the valid topic tn with a direct
// reading of the grammar, and checks the rules for literal patterns and
// reserved namespaces.
func checkMatch(t *testing.T, p topic.Pattern, tn string) {
	t.Helper()

	got := p.Match(tn)
	if want := referenceMatch(p.String(), tn); got != want {
		t.Errorf("%q.Match(%q) = %v, want %v", p, tn, got, want)
	}
	if p.IsLiteral() && got != (p.String() == tn) {
		t.Errorf("literal %q.Match(%q) = %v, want %v", p, tn, got, !got)
	}
	if first := firstSegment(p.String()); got && (first == "*" || first == ">") && topic.IsReserved(tn) {
		t.Errorf("%q.Match(%q) = true, but a leading wildcard must not match a reserved topic", p, tn)
	}
}

// referenceMatch matches a topic against a pattern segment by segment: '*'
// is one segment, a last '>' one or more, and a leading wildcard never
// matches a reserved namespace.
func referenceMatch(pattern, tn string) bool {
	ps := strings.Split(pattern, ".")
	ts := strings.Split(tn, ".")
	if (ps[0] == "*" || ps[0] == ">") && topic.IsReserved(tn) {
		return false
	}

	for i, seg := range ps {
		if seg == ">" {
			return len(ts) > i
		}
		if i >= len(ts) || (seg != "*" && seg != ts[i]) {
			return false
		}
	}
	return len(ts) == len(ps)
}

// checkContains checks p.Contains(q) against topics built from q: every
// '*' of q is replaced by a segment that p does not name, and a last '>'
// by one to len(p)+1 such segments. q matches each of them, so p contains q
// exactly when p matches them all. The built topics may exceed MaxLen,
// which Match does not check.
func checkContains(t *testing.T, p, q topic.Pattern) {
	t.Helper()

	got := p.Contains(q)
	if q.IsLiteral() && got != p.Match(q.String()) {
		t.Errorf("%q.Contains(literal %q) = %v, but Match = %v", p, q, got, !got)
	}

	for _, w := range witnesses(p, q) {
		if !q.Match(w) {
			t.Fatalf("%q.Match(%q) = false for a topic built from it", q, w)
		}
		if got && !p.Match(w) {
			t.Errorf("%q.Contains(%q) = true, but it does not match %q", p, q, w)
			return
		}
	}
	if !got && allMatch(p, witnesses(p, q)) {
		t.Errorf("%q.Contains(%q) = false, but it matches every topic that %q matches", p, q, q)
	}
}

func allMatch(p topic.Pattern, topics []string) bool {
	for _, tn := range topics {
		if !p.Match(tn) {
			return false
		}
	}
	return true
}

// witnesses returns the topics that checkContains tries for q.
func witnesses(p, q topic.Pattern) []string {
	fresh := freshSegment(p)
	qs := strings.Split(q.String(), ".")
	ps := strings.Split(p.String(), ".")

	var base []string
	for _, seg := range qs {
		if seg == "*" {
			seg = fresh
		}
		base = append(base, seg)
	}
	if qs[len(qs)-1] != ">" {
		return []string{strings.Join(base, ".")}
	}

	var out []string
	prefix := base[:len(base)-1]
	for n := 1; n <= len(ps)+1; n++ {
		segs := append(append([]string(nil), prefix...), repeat(fresh, n)...)
		out = append(out, strings.Join(segs, "."))
	}
	return out
}

// freshSegment returns a short segment that p does not contain and that is
// not a reserved namespace.
func freshSegment(p topic.Pattern) string {
	used := make(map[string]bool)
	for _, seg := range strings.Split(p.String(), ".") {
		used[seg] = true
	}
	for _, c := range "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-:/" {
		for _, seg := range []string{string(c), string(c) + string(c)} {
			if !used[seg] {
				return seg
			}
		}
	}
	panic("no fresh segment: impossible for a pattern of at most 255 bytes")
}

func repeat(s string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = s
	}
	return out
}

// topicVariants returns tn and the same topic moved under each reserved
// namespace, so that every run also tries reserved topics.
func topicVariants(tn string) []string {
	out := []string{tn}
	for _, ns := range reservedNamespaces {
		if v := ns + "." + tn; len(v) <= topic.MaxLen {
			out = append(out, v)
		}
		out = append(out, ns)
	}
	return out
}

func firstSegment(s string) string {
	first, _, _ := strings.Cut(s, ".")
	return first
}
