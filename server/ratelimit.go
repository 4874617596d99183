package server

import (
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// abuseAfter is how long a connection may keep sending over its message
// rate before it is closed.
const abuseAfter = 10 * time.Second

// messageGuard limits the requests of one connection with a token bucket
// and notices a client that keeps sending over the limit: one whose
// requests are refused at least once a second for longer than abuseAfter.
// It is safe for concurrent use.
type messageGuard struct {
	limiter *rate.Limiter

	mu          sync.Mutex
	streakStart time.Time // first refusal of the current streak
	lastDenied  time.Time
}

func newMessageGuard(perSecond float64, burst int) *messageGuard {
	return &messageGuard{limiter: rate.NewLimiter(rate.Limit(perSecond), burst)}
}

// allow reports whether one more request may run now, and whether the
// client has been refused continuously for longer than abuseAfter.
func (g *messageGuard) allow() (ok, abusive bool) {
	now := time.Now()
	if g.limiter.AllowN(now, 1) {
		return true, false
	}

	g.mu.Lock()
	defer g.mu.Unlock()
	if now.Sub(g.lastDenied) > time.Second {
		g.streakStart = now
	}
	g.lastDenied = now
	return false, now.Sub(g.streakStart) > abuseAfter
}
