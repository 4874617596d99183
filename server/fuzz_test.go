package server

import (
	"math"
	"testing"
	"testing/synctest"
	"time"
)

// maxGuardSteps bounds the schedule of one FuzzMessageGuard input.
const maxGuardSteps = 512

// FuzzMessageGuard drives a messageGuard with a fuzzed rate, burst and
// schedule on a fake clock. Each schedule byte waits (b % 64) * 25 ms, then
// sends 1 + b / 64 requests at once. The guard must never allow more than
// burst + rate * (elapsed + 1 ns) requests. It must report abuse exactly
// when requests have been rejected at least once a second for longer than
// abuseAfter. The seed corpus is in testdata/fuzz/FuzzMessageGuard.
//
// NOTE: Config.Validate accepts a NaN --message-rate, which
// golang.org/x/time/rate treats as no limit. This target covers finite
// positive rates only.
func FuzzMessageGuard(f *testing.F) {
	f.Add(10.0, 5, []byte{0, 0, 0, 0, 0, 0, 0, 0})
	f.Add(100.0, 1024, []byte{255, 255, 255, 192, 128})
	f.Add(1.0, 1, []byte{200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200})
	f.Add(0.5, 2, []byte{63, 63, 127, 191, 255, 0, 1, 2})
	f.Add(1e-9, 1, []byte{255, 255, 255, 255})
	f.Add(1e9, 1, []byte{192, 192, 192})
	f.Add(3.3, 1<<40, []byte{1})

	f.Fuzz(func(t *testing.T, perSecond float64, burst int, schedule []byte) {
		if !(perSecond > 0) || math.IsInf(perSecond, 0) || burst < 1 {
			return // Config.Validate rejects these but NaN and +Inf, which mean no limit
		}
		if len(schedule) > maxGuardSteps {
			schedule = schedule[:maxGuardSteps]
		}

		synctest.Test(t, func(t *testing.T) {
			runGuardSchedule(t, perSecond, burst, schedule)
		})
	})
}

// runGuardSchedule runs one FuzzMessageGuard input inside a synctest
// bubble and checks every result of allow.
func runGuardSchedule(t *testing.T, perSecond float64, burst int, schedule []byte) {
	g := newMessageGuard(perSecond, burst)
	start := time.Now()

	allowed := 0
	var streakStart, lastDenied time.Time
	for _, b := range schedule {
		time.Sleep(time.Duration(b%64) * 25 * time.Millisecond)
		now := time.Now()

		for range 1 + int(b/64) {
			ok, abusive := g.allow()
			if ok {
				allowed++
				if abusive {
					t.Fatalf("allow() at %v = ok and abusive, want abusive only with a refusal", now.Sub(start))
				}
				continue
			}

			// The documented rule: a gap of more than one second between
			// rejections starts a new streak.
			if lastDenied.IsZero() || now.Sub(lastDenied) > time.Second {
				streakStart = now
			}
			lastDenied = now
			if want := now.Sub(streakStart) > abuseAfter; abusive != want {
				t.Fatalf("allow() at %v: abusive = %v, want %v (rejected since %v)", now.Sub(start), abusive, want, streakStart.Sub(start))
			}
		}

		// The limiter rounds waits down to whole nanoseconds, so at rates
		// near 1e9/s it lets one more request through.
		limit := float64(burst) + perSecond*(now.Sub(start).Seconds()+1e-9)
		if float64(allowed) > math.Floor(limit+1e-6) {
			t.Fatalf("after %v at %g/s with burst %d: %d requests allowed, want at most %g", now.Sub(start), perSecond, burst, allowed, limit)
		}
	}

	if len(schedule) > 0 && allowed == 0 {
		t.Fatalf("burst %d: no request allowed, want at least the first", burst)
	}
}
