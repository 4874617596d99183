package appcall

import (
	"testing"
	"time"
)

func TestLogThrottle(t *testing.T) {
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	steps := []struct {
		after          time.Duration
		wantOK         bool
		wantSuppressed int
	}{
		{0, true, 0},
		{time.Second, false, 0},
		{2 * time.Second, false, 0},
		{logInterval - time.Nanosecond, false, 0},
		{logInterval, true, 3},
		{logInterval + time.Second, false, 0},
		{3 * logInterval, true, 1},
		{5 * logInterval, true, 0},
	}

	var throttle logThrottle
	for _, s := range steps {
		ok, suppressed := throttle.allow(start.Add(s.after))
		if ok != s.wantOK || suppressed != s.wantSuppressed {
			t.Errorf("allow(start+%s) = %v, %d, want %v, %d", s.after, ok, suppressed, s.wantOK, s.wantSuppressed)
		}
	}
}
