package appcall

import (
	"fmt"
	"os"
	"runtime"
	"testing"
	"time"
)

// TestMain fails the run when goroutines started by the tests, such as the
// HTTP transport's connection readers, are still running at the end.
func TestMain(m *testing.M) {
	before := runtime.NumGoroutine()
	code := m.Run()
	if code == 0 {
		if err := waitForGoroutines(before); err != nil {
			fmt.Fprintln(os.Stderr, err)
			code = 1
		}
	}
	os.Exit(code)
}

// waitForGoroutines gives goroutines of closed connections up to 5 s to
// return, then reports the ones still running.
func waitForGoroutines(want int) error {
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > want {
		if time.Now().After(deadline) {
			stacks := make([]byte, 1<<20)
			stacks = stacks[:runtime.Stack(stacks, true)]
			return fmt.Errorf("leaked goroutines: %d running, want at most %d\n%s", runtime.NumGoroutine(), want, stacks)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return nil
}
