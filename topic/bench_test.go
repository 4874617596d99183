package topic

import "testing"

// BenchmarkMatch measures Pattern.Match of a topic with four segments
// against patterns of each kind, matching and not, and of a reserved topic
// against '>'.
func BenchmarkMatch(b *testing.B) {
	const event = "tenant7.orders.42.lines"
	cases := []struct {
		name    string
		pattern string
		topic   string
		want    bool
	}{
		{"literal/hit", "tenant7.orders.42.lines", event, true},
		{"literal/miss", "tenant7.orders.43.lines", event, false},
		{"star/hit", "tenant7.orders.*.lines", event, true},
		{"star/miss-first", "tenant8.orders.*.lines", event, false},
		{"star/miss-last", "tenant7.orders.*.status", event, false},
		{"tail/hit", "tenant7.>", event, true},
		{"tail/miss", "tenant8.>", event, false},
		{"reserved/miss", ">", "db.public.users", false},
	}

	for _, tc := range cases {
		b.Run(tc.name, func(b *testing.B) {
			p := MustParse(tc.pattern)
			if got := p.Match(tc.topic); got != tc.want {
				b.Fatalf("%q.Match(%q) = %v, want %v", p, tc.topic, got, tc.want)
			}

			b.ReportAllocs()
			for b.Loop() {
				p.Match(tc.topic)
			}
		})
	}
}

// BenchmarkContains measures Pattern.Contains, the check of a subscribe
// pattern against one pattern of a token's claims.
func BenchmarkContains(b *testing.B) {
	cases := []struct {
		name  string
		claim string
		sub   string
		want  bool
	}{
		{"literal/yes", "tenant7.orders.42", "tenant7.orders.42", true},
		{"tail/yes", "tenant7.>", "tenant7.orders.*.lines", true},
		{"star/yes", "tenant7.*.*", "tenant7.orders.42", true},
		{"star/no", "tenant7.*", "tenant7.>", false},
		{"tail/no", "tenant8.>", "tenant7.orders.42", false},
	}

	for _, tc := range cases {
		b.Run(tc.name, func(b *testing.B) {
			claim, sub := MustParse(tc.claim), MustParse(tc.sub)
			if got := claim.Contains(sub); got != tc.want {
				b.Fatalf("%q.Contains(%q) = %v, want %v", claim, sub, got, tc.want)
			}

			b.ReportAllocs()
			for b.Loop() {
				claim.Contains(sub)
			}
		})
	}
}
