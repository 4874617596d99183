package listen

import (
	"testing"
	"time"
)

func fixedRand(v float64) func() float64 {
	return func() float64 { return v }
}

func TestBackoffDoublesUpToMax(t *testing.T) {
	b := backoff{min: 100 * time.Millisecond, max: 2 * time.Second, rand: fixedRand(0.5)}

	want := []time.Duration{
		100 * time.Millisecond,
		200 * time.Millisecond,
		400 * time.Millisecond,
		800 * time.Millisecond,
		1600 * time.Millisecond,
		2 * time.Second,
		2 * time.Second,
	}
	for i, w := range want {
		if got := b.next(); got != w {
			t.Errorf("next() #%d = %v, want %v", i+1, got, w)
		}
	}
}

func TestBackoffJitterBounds(t *testing.T) {
	const (
		minDelay = 100 * time.Millisecond
		maxDelay = 30 * time.Second
	)

	for _, r := range []float64{0, 0.25, 0.5, 0.75, 0.999999} {
		b := backoff{min: minDelay, max: maxDelay, rand: fixedRand(r)}
		base := minDelay

		for i := range 20 {
			got := b.next()
			lo := min(base/2, maxDelay)
			hi := min(base*3/2, maxDelay)
			if got < lo || got > hi {
				t.Errorf("rand=%v: next() #%d = %v, want within [%v, %v]", r, i+1, got, lo, hi)
			}
			base = min(base*2, maxDelay)
		}
	}
}

func TestBackoffNeverExceedsMax(t *testing.T) {
	b := backoff{min: time.Second, max: time.Second, rand: fixedRand(0.999999)}

	for i := range 5 {
		if got := b.next(); got != time.Second {
			t.Errorf("next() #%d = %v, want %v", i+1, got, time.Second)
		}
	}
}

func TestBackoffHugeMaxDoesNotOverflow(t *testing.T) {
	b := backoff{min: time.Millisecond, max: time.Duration(1<<63 - 1), rand: fixedRand(0.5)}

	prev := time.Duration(0)
	for i := range 100 {
		got := b.next()
		if got <= 0 || got < prev {
			t.Fatalf("next() #%d = %v after %v, want positive and not decreasing", i+1, got, prev)
		}
		prev = got
	}
}

func TestBackoffResetStartsAtMin(t *testing.T) {
	b := backoff{min: 100 * time.Millisecond, max: time.Minute, rand: fixedRand(0.5)}
	for range 5 {
		b.next()
	}

	b.reset()

	if got := b.next(); got != 100*time.Millisecond {
		t.Errorf("next() after reset = %v, want %v", got, 100*time.Millisecond)
	}
}
