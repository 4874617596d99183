package server

import (
	"testing"
	"testing/synctest"
	"time"
)

func TestMessageGuardLimitsAndNoticesAbuse(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := newMessageGuard(10, 5)

		allowed := 0
		for range 20 {
			if ok, _ := g.allow(); ok {
				allowed++
			}
		}
		if allowed != 5 {
			t.Fatalf("burst of 20 at once: %d allowed, want the burst of 5", allowed)
		}

		time.Sleep(time.Second)
		allowed = 0
		for range 20 {
			if ok, _ := g.allow(); ok {
				allowed++
			}
		}
		if allowed != 5 {
			t.Fatalf("after 1 s at 10/s with a burst of 5: %d allowed, want 5", allowed)
		}

		// Staying over the limit for longer than abuseAfter is abuse.
		var abusive bool
		for range 12 {
			time.Sleep(time.Second)
			for range 50 {
				_, abusive = g.allow()
			}
		}
		if !abusive {
			t.Fatal("a client over the limit for 12 s is not reported as abusive")
		}

		// Keeping to the limit clears it.
		time.Sleep(2 * time.Second)
		if ok, abusive := g.allow(); !ok || abusive {
			t.Fatalf("after a pause: ok=%v abusive=%v, want allowed and not abusive", ok, abusive)
		}
	})
}
