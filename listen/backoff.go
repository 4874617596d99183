package listen

import "time"

// backoff computes reconnect delays: min doubling per failure up to max,
// times a random factor in [0.5, 1.5), and never more than max. The jitter
// spreads the reconnects of many sidecars after a database restart.
//
// A backoff is not safe for concurrent use.
type backoff struct {
	min, max time.Duration
	rand     func() float64 // returns a value in [0, 1)

	base time.Duration // delay before jitter for the next failure, or 0 for min
}

// next returns the delay to wait after one more failure.
func (b *backoff) next() time.Duration {
	if b.base == 0 {
		b.base = b.min
	}

	// Cap in floating point: base*1.5 can overflow a Duration.
	d := b.max
	if f := float64(b.base) * (0.5 + b.rand()); f < float64(b.max) {
		d = time.Duration(f)
	}

	// Double until the cap. Comparing against max/2 avoids overflow.
	if b.base <= b.max/2 {
		b.base *= 2
	} else {
		b.base = b.max
	}

	return d
}

// reset starts the sequence again at min.
func (b *backoff) reset() {
	b.base = 0
}
