// Command soak runs the sidecar for a long while under a steady load of
// publishers and subscribers, and injects faults: Postgres crashes and
// restarts, sidecar kills and drains, terminated and silently cut LISTEN
// connections, and a subscriber that stops reading. It then checks every
// committed event against what each subscription received: nothing
// missing, nothing twice, in id order. Everything runs on 127.0.0.1. Run
// "go run ./cmd/soak -h" for its flags. docs/soak.md explains the checks
// and records a run.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	// The first interrupt ends publishing early, and the soak still checks
	// and reports what it has. A second one aborts at once.
	signals := make(chan os.Signal, 2)
	signal.Notify(signals, os.Interrupt, syscall.SIGTERM)
	ctx, abort := context.WithCancel(context.Background())
	stopEarly := make(chan struct{})
	go func() {
		<-signals
		fmt.Fprintln(os.Stderr, "soak: interrupted: ending publishing early; interrupt again to abort")
		close(stopEarly)
		<-signals
		fmt.Fprintln(os.Stderr, "soak: interrupted again: aborting")
		abort()
	}()

	err := run(ctx, stopEarly, os.Args[1:], os.Stdout, os.Stderr)
	abort()
	if err == nil {
		return
	}
	var exit exitError
	if errors.As(err, &exit) {
		os.Exit(int(exit))
	}
	fmt.Fprintln(os.Stderr, "soak:", err)
	os.Exit(1)
}

// exitError ends the program with its code and no further message.
type exitError int

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", int(e)) }
