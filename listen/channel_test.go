package listen

import (
	"errors"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
)

func TestValidateChannel(t *testing.T) {
	tests := []struct {
		name string
		ok   bool
	}{
		{"orders", true},
		{"MixedCase", true},
		{"with space", true},
		{`we"ird`, true},
		{"schema.table", true},
		{"ünïcode", true},
		{strings.Repeat("a", 63), true},
		{strings.Repeat("é", 31) + "a", true}, // 63 bytes
		{"", false},
		{strings.Repeat("a", 64), false},
		{strings.Repeat("é", 32), false}, // 64 bytes, 32 runes
		{"nul\x00byte", false},
		{"bad\xffutf8", false},
	}

	for _, tt := range tests {
		err := ValidateChannel(tt.name)
		if got := err == nil; got != tt.ok {
			t.Errorf("ValidateChannel(%q) = %v, want ok=%v", tt.name, err, tt.ok)
		}
		if err != nil && !errors.Is(err, ErrInvalidChannel) {
			t.Errorf("ValidateChannel(%q) = %v, want an error wrapping ErrInvalidChannel", tt.name, err)
		}
	}
}

// FuzzValidateChannel checks that every accepted name quotes to a single
// identifier that Postgres reads back as the same name.
func FuzzValidateChannel(f *testing.F) {
	for _, seed := range []string{"orders", "MixedCase", `we"ird`, `";drop table x;--`, "a\x00b", ""} {
		f.Add(seed)
	}

	f.Fuzz(func(t *testing.T, name string) {
		if ValidateChannel(name) != nil {
			return
		}

		quoted := pgx.Identifier{name}.Sanitize()
		inner, ok := strings.CutPrefix(quoted, `"`)
		inner, ok2 := strings.CutSuffix(inner, `"`)
		if !ok || !ok2 {
			t.Fatalf("Sanitize(%q) = %s, want it wrapped in double quotes", name, quoted)
		}
		if strings.ReplaceAll(inner, `""`, "") != strings.ReplaceAll(inner, `"`, "") {
			t.Fatalf("Sanitize(%q) = %s, want every inner quote doubled", name, quoted)
		}
		if got := strings.ReplaceAll(inner, `""`, `"`); got != name {
			t.Fatalf("Sanitize(%q) = %s, which reads back as %q", name, quoted, got)
		}
	})
}
