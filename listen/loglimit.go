package listen

import "time"

// logLimiter lets a repeating log line through at most once per interval
// and counts the occurrences it suppressed. It is not safe for concurrent use.
type logLimiter struct {
	interval   time.Duration
	last       time.Time // zero until the first line is let through
	suppressed int
}

// allow reports whether to log an occurrence at now and, if so, how many
// occurrences were suppressed since the previous line.
func (l *logLimiter) allow(now time.Time) (ok bool, suppressed int) {
	if !l.last.IsZero() && now.Sub(l.last) < l.interval {
		l.suppressed++
		return false, 0
	}

	suppressed = l.suppressed
	l.last = now
	l.suppressed = 0
	return true, suppressed
}

// reset makes the next occurrence log at once, as the start of a new streak.
func (l *logLimiter) reset() {
	l.last = time.Time{}
	l.suppressed = 0
}
