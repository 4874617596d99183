package listen

import (
	"testing"
	"time"
)

func TestLogLimiter(t *testing.T) {
	l := logLimiter{interval: 30 * time.Second}
	start := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)

	steps := []struct {
		after          time.Duration
		wantOK         bool
		wantSuppressed int
	}{
		{0, true, 0},
		{100 * time.Millisecond, false, 0},
		{10 * time.Second, false, 0},
		{29 * time.Second, false, 0},
		{30 * time.Second, true, 3},
		{31 * time.Second, false, 0},
		{90 * time.Second, true, 1},
	}
	for _, s := range steps {
		ok, suppressed := l.allow(start.Add(s.after))
		if ok != s.wantOK || suppressed != s.wantSuppressed {
			t.Errorf("allow(+%v) = %v, %d, want %v, %d", s.after, ok, suppressed, s.wantOK, s.wantSuppressed)
		}
	}

	l.reset()
	if ok, suppressed := l.allow(start.Add(91 * time.Second)); !ok || suppressed != 0 {
		t.Errorf("allow after reset = %v, %d, want true, 0", ok, suppressed)
	}
}
