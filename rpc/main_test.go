package rpc

import (
	"flag"
	"fmt"
	"os"
	"runtime"
	"testing"
	"time"
)

// TestMain fails the run when goroutines started by the tests are still
// running at the end, because every Peer handler and every read loop of
// the tests must stop once its connection ends. Tests that use synctest are
// also checked by synctest itself.
func TestMain(m *testing.M) {
	before := runtime.NumGoroutine()
	code := m.Run()
	if fuzz := flag.Lookup("test.fuzz"); fuzz != nil && fuzz.Value.String() != "" {
		// With -fuzz, the fuzzing engine starts a goroutine of os/signal
		// that runs until the process exits.
		before++
	}
	if code == 0 {
		if err := checkGoroutines(before); err != nil {
			fmt.Fprintln(os.Stderr, err)
			code = 1
		}
	}
	os.Exit(code)
}

// checkGoroutines waits up to 5 s for the goroutine count to fall back to
// before, because goroutines that have signalled their end may still be
// returning.
func checkGoroutines(before int) error {
	deadline := time.Now().Add(5 * time.Second)
	for {
		n := runtime.NumGoroutine()
		if n <= before {
			return nil
		}
		if time.Now().After(deadline) {
			stacks := make([]byte, 1<<20)
			stacks = stacks[:runtime.Stack(stacks, true)]
			return fmt.Errorf("leaked goroutines: %d running, want at most %d\n%s", n, before, stacks)
		}
		time.Sleep(10 * time.Millisecond) // polling for goroutines to exit, not for readiness
	}
}
