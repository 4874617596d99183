package appcall

import (
	"sync"
	"time"
)

// logInterval is the shortest time between two logged call failures. An
// application that is down fails every call, and one record per interval
// reports it without flooding the log.
const logInterval = 5 * time.Second

// logThrottle lets one log record through per logInterval and counts the
// others. The zero value lets the first record through. It is safe for
// concurrent use.
type logThrottle struct {
	mu         sync.Mutex
	next       time.Time
	suppressed int
}

// allow reports whether a record may be logged at now. When it may, it also
// returns how many records were held back since the last one logged.
//
// NOTE: records held back after the last logged one are never counted in a
// log record when no failure follows them.
func (t *logThrottle) allow(now time.Time) (ok bool, suppressed int) {
	t.mu.Lock()
	defer t.mu.Unlock()

	if now.Before(t.next) {
		t.suppressed++
		return false, 0
	}

	suppressed = t.suppressed
	t.suppressed = 0
	t.next = now.Add(logInterval)
	return true, suppressed
}
