package topic

import (
	"errors"
	"strings"
	"testing"
)

func TestValidate(t *testing.T) {
	tests := []struct {
		topic string
		want  error
	}{
		{"orders", nil},
		{"orders.42", nil},
		{"orders.42.lines", nil},
		{"A-Z_a-z:0-9/x", nil},
		{"db.public.users", nil},
		{strings.Repeat("a", MaxLen), nil},

		{"", ErrEmpty},
		{strings.Repeat("a", MaxLen+1), ErrTooLong},
		{".", ErrSegment},
		{".orders", ErrSegment},
		{"orders.", ErrSegment},
		{"orders..42", ErrSegment},
		{"orders 42", ErrSegment},
		{"orders.é", ErrSegment},
		{"orders.4*2", ErrSegment},
		{"orders.*", ErrWildcard},
		{"orders.>", ErrWildcard},
		{"*", ErrWildcard},
		{">", ErrWildcard},
	}
	for _, tt := range tests {
		err := Validate(tt.topic)
		if !errors.Is(err, tt.want) || (tt.want == nil) != (err == nil) {
			t.Errorf("Validate(%q) = %v, want %v", tt.topic, err, tt.want)
		}
	}
}

func TestParse(t *testing.T) {
	tests := []struct {
		pattern     string
		wantErr     error
		wantLiteral bool
	}{
		{"orders", nil, true},
		{"orders.42", nil, true},
		{"db.public.users", nil, true},
		{"orders.*", nil, false},
		{"orders.>", nil, false},
		{"*.42", nil, false},
		{"*", nil, false},
		{">", nil, false},
		{"*.>", nil, false},
		{"orders.*.lines", nil, false},
		{strings.Repeat("a", MaxLen), nil, true},

		{"", ErrEmpty, false},
		{strings.Repeat("a", MaxLen+1), ErrTooLong, false},
		{"orders.>.lines", ErrWildcard, false},
		{">.orders", ErrWildcard, false},
		{"orders.**", ErrSegment, false},
		{"orders.>>", ErrSegment, false},
		{"orders.4*", ErrSegment, false},
		{"orders..*", ErrSegment, false},
		{"orders.", ErrSegment, false},
		{"orders.a b", ErrSegment, false},
	}
	for _, tt := range tests {
		p, err := Parse(tt.pattern)
		if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil) != (err == nil) {
			t.Errorf("Parse(%q) error = %v, want %v", tt.pattern, err, tt.wantErr)
			continue
		}
		if err != nil {
			continue
		}
		if got := p.String(); got != tt.pattern {
			t.Errorf("Parse(%q).String() = %q, want the input", tt.pattern, got)
		}
		if got := p.IsLiteral(); got != tt.wantLiteral {
			t.Errorf("Parse(%q).IsLiteral() = %v, want %v", tt.pattern, got, tt.wantLiteral)
		}
	}
}

func TestMustParsePanics(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("MustParse(\"a..b\") did not panic")
		}
	}()
	MustParse("a..b")
}

func TestMatch(t *testing.T) {
	tests := []struct {
		pattern string
		topic   string
		want    bool
	}{
		// Literal patterns match exactly their own text.
		{"orders.42", "orders.42", true},
		{"orders.42", "orders.43", false},
		{"orders.42", "orders.42.lines", false},
		{"orders", "Orders", false},

		// '*' matches exactly one segment.
		{"orders.*", "orders.42", true},
		{"orders.*", "orders", false},
		{"orders.*", "orders.42.lines", false},
		{"*.42", "orders.42", true},
		{"*.42", "orders.43", false},
		{"orders.*.lines", "orders.42.lines", true},
		{"orders.*.lines", "orders.42.items", false},
		{"*", "orders", true},
		{"*", "orders.42", false},
		{"*.*", "orders.42", true},
		{"*.*", "orders", false},

		// '>' matches one or more trailing segments.
		{"orders.>", "orders.42", true},
		{"orders.>", "orders.42.lines", true},
		{"orders.>", "orders", false},
		{"orders.>", "invoices.42", false},
		{">", "orders", true},
		{">", "orders.42.lines", true},
		{"*.>", "orders.42", true},
		{"*.>", "orders", false},
		{"orders.*.>", "orders.42.lines", true},
		{"orders.*.>", "orders.42", false},

		// Reserved namespaces: a wildcard in the first segment never
		// reaches them, a pattern naming the namespace does.
		{">", "db.public.users", false},
		{"*.>", "db.public.users", false},
		{"*.public.users", "db.public.users", false},
		{"*", "sys", false},
		{">", "pg", false},
		{">", "presence.room1", false},
		{"*.>", "sys.shutdown", false},
		{"db.>", "db.public.users", true},
		{"db.*.users", "db.public.users", true},
		{"db.public.users", "db.public.users", true},
		{"presence.*", "presence.room1", true},
		{"sys", "sys", true},
		{">", "dbx.public", true},
		{">", "database", true},
		{"*.>", "app.db.users", true},
		{"*", "Db", true},
	}
	for _, tt := range tests {
		p := MustParse(tt.pattern)
		if got := p.Match(tt.topic); got != tt.want {
			t.Errorf("MustParse(%q).Match(%q) = %v, want %v", tt.pattern, tt.topic, got, tt.want)
		}
	}
}

func TestMatchDoesNotAllocate(t *testing.T) {
	p := MustParse("orders.*.lines.>")
	allocs := testing.AllocsPerRun(100, func() {
		p.Match("orders.42.lines.7.qty")
	})
	if allocs != 0 {
		t.Errorf("Match allocations = %v, want 0", allocs)
	}
}

func TestContains(t *testing.T) {
	tests := []struct {
		p, q string
		want bool
	}{
		{"orders.>", "orders.*", true},
		{"orders.>", "orders.>", true},
		{"orders.>", "orders.42", true},
		{"orders.>", "orders.*.lines", true},
		{"orders.*", "orders.>", false},
		{"orders.*", "orders.*", true},
		{"orders.*", "orders.42", true},
		{"orders.*", "orders.42.lines", false},
		{"orders.*", "orders", false},
		{"orders.>", "orders", false},
		{"orders.42", "orders.42", true},
		{"orders.42", "orders.*", false},
		{"orders.42", "orders.43", false},
		{"orders", "orders.42", false},
		{">", "orders", true},
		{">", "*.>", true},
		{">", ">", true},
		{"*.>", ">", false},
		{"*.>", "*.*", true},
		{"*", ">", false},
		{"*", "*", true},
		{"*.*", "*.42", true},
		{"*.42", "*.*", false},

		// Reserved namespaces.
		{">", "db.public.users", false},
		{">", "db.>", false},
		{"*.>", "db.public.users", false},
		{"*", "sys", false},
		{"*.public.users", "db.public.users", false},
		{"db.>", "db.public.users", true},
		{"db.>", "db.*.users", true},
		{"db.>", ">", false},
		{"db.>", "*.>", false},
		{"presence.*", "presence.room1", true},
		{">", "dbx.public", true},
	}
	for _, tt := range tests {
		p, q := MustParse(tt.p), MustParse(tt.q)
		if got := p.Contains(q); got != tt.want {
			t.Errorf("MustParse(%q).Contains(%q) = %v, want %v", tt.p, tt.q, got, tt.want)
		}
	}
}

func TestIsReserved(t *testing.T) {
	tests := []struct {
		topic string
		want  bool
	}{
		{"db", true},
		{"db.public.users", true},
		{"pg.notify", true},
		{"presence.room1", true},
		{"sys.shutdown", true},
		{"dbx.public", false},
		{"orders.db", false},
		{"DB.public", false},
	}
	for _, tt := range tests {
		if got := IsReserved(tt.topic); got != tt.want {
			t.Errorf("IsReserved(%q) = %v, want %v", tt.topic, got, tt.want)
		}
	}
}

func TestSanitize(t *testing.T) {
	tests := []struct {
		name string
		want string
	}{
		{"", "_"},
		{"users", "users"},
		{"Order_Lines-2:x/y", "Order_Lines-2:x/y"},
		{"my.table", "my_table"},
		{"my table", "my_table"},
		{"*", "_"},
		{">", "_"},
		{"é", "__"},
		{"a\x00b", "a_b"},
	}
	for _, tt := range tests {
		got := Sanitize(tt.name)
		if got != tt.want {
			t.Errorf("Sanitize(%q) = %q, want %q", tt.name, got, tt.want)
		}
		if err := Validate(got); err != nil {
			t.Errorf("Validate(Sanitize(%q)) = %v, want nil", tt.name, err)
		}
	}
}

func TestSet(t *testing.T) {
	set, err := ParseSet([]string{"orders.>", "chat.*"})
	if err != nil {
		t.Fatalf("ParseSet = %v, want nil", err)
	}

	allows := []struct {
		q    string
		want bool
	}{
		{"orders.*", true},
		{"chat.room1", true},
		{"chat.>", false},
		{"db.>", false},
	}
	for _, tt := range allows {
		if got := set.Allows(MustParse(tt.q)); got != tt.want {
			t.Errorf("Allows(%q) = %v, want %v", tt.q, got, tt.want)
		}
	}

	topics := []struct {
		topic string
		want  bool
	}{
		{"orders.42.lines", true},
		{"chat.room1", true},
		{"chat.room1.typing", false},
		{"db.public.orders", false},
	}
	for _, tt := range topics {
		if got := set.AllowsTopic(tt.topic); got != tt.want {
			t.Errorf("AllowsTopic(%q) = %v, want %v", tt.topic, got, tt.want)
		}
	}

	if _, err := ParseSet([]string{"orders.>", "bad..pattern"}); !errors.Is(err, ErrSegment) {
		t.Errorf("ParseSet with an invalid pattern = %v, want %v", err, ErrSegment)
	}
}

// matchBySegments is a reference for Pattern.Match. It splits both sides
// on '.' and compares them segment by segment.
func matchBySegments(pattern, topic string) bool {
	ps := strings.Split(pattern, ".")
	ts := strings.Split(topic, ".")
	if (ps[0] == "*" || ps[0] == ">") && IsReserved(topic) {
		return false
	}
	for i, seg := range ps {
		if seg == ">" {
			return len(ts) > i
		}
		if i >= len(ts) {
			return false
		}
		if seg != "*" && seg != ts[i] {
			return false
		}
	}
	return len(ts) == len(ps)
}

func FuzzParseMatch(f *testing.F) {
	seeds := []struct{ p, q, t string }{
		{"orders.*", "orders.42", "orders.42"},
		{"orders.>", "orders.*.lines", "orders.42.lines"},
		{">", "db.>", "db.public.users"},
		{"*.>", "*.*", "a.b"},
		{"*", ">", "a"},
		{"a.b", "a.b", "a.b."},
		{"db.*", "db.x", "db."},
		{"", "", ""},
	}
	for _, s := range seeds {
		f.Add(s.p, s.q, s.t)
	}

	f.Fuzz(func(t *testing.T, ps, qs, ts string) {
		p, perr := Parse(ps)
		q, qerr := Parse(qs)
		terr := Validate(ts)

		// A concrete topic is also a literal pattern that matches itself.
		if terr == nil {
			lit, err := Parse(ts)
			if err != nil {
				t.Fatalf("Validate(%q) = nil but Parse = %v", ts, err)
			}
			if !lit.IsLiteral() || !lit.Match(ts) {
				t.Fatalf("Parse(%q) is not a literal that matches itself", ts)
			}
		}
		if perr != nil || terr != nil {
			return
		}

		got := p.Match(ts)
		if want := matchBySegments(ps, ts); got != want {
			t.Fatalf("Parse(%q).Match(%q) = %v, want %v", ps, ts, got, want)
		}

		// Contains must be sound: whatever q matches, p matches too.
		if qerr == nil && p.Contains(q) && q.Match(ts) && !got {
			t.Fatalf("Parse(%q).Contains(%q) but %q matches only the second", ps, qs, ts)
		}
		if !p.Contains(p) {
			t.Fatalf("Parse(%q).Contains(itself) = false", ps)
		}
	})
}

func FuzzSanitize(f *testing.F) {
	f.Add("users")
	f.Add("my.table")
	f.Add("")
	f.Fuzz(func(t *testing.T, name string) {
		got := Sanitize(name)
		if len(name) <= MaxLen {
			if err := Validate(got); err != nil {
				t.Fatalf("Validate(Sanitize(%q)) = %v, want nil", name, err)
			}
		}
		if Validate(name) == nil && !strings.Contains(name, ".") && got != name {
			t.Fatalf("Sanitize(%q) = %q, want a valid segment unchanged", name, got)
		}
	})
}
