package listen

import (
	"testing"
	"time"
)

func TestTrackerGenerationAndSince(t *testing.T) {
	var tr tracker
	t0 := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)

	if got := tr.connected(t0, 42); got != 1 {
		t.Errorf("first connected() = %d, want generation 1", got)
	}
	tr.failed(t0.Add(time.Second), "boom")
	tr.failed(t0.Add(2*time.Second), "boom again")

	s := tr.snapshot()
	want := Status{Since: t0.Add(time.Second), LastError: "boom again", Generation: 1}
	if s != want {
		t.Errorf("snapshot() = %+v, want %+v", s, want)
	}

	if got := tr.connected(t0.Add(3*time.Second), 43); got != 2 {
		t.Errorf("second connected() = %d, want generation 2", got)
	}
	s = tr.snapshot()
	if !s.Connected || s.BackendPID != 43 || s.LastError != "boom again" {
		t.Errorf("snapshot() after reconnect = %+v, want connected to pid 43 with LastError kept", s)
	}
}
