package main

import (
	"context"
	"fmt"
	"maps"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/pgsidecar/sidecar/client"
)

// Slow subscribers subscribe to the run's topic like the others and then
// stop reading, so that the sidecar's outbound queue for them grows until
// it closes them as too slow. They show what such a client costs the
// subscribers that keep up.

const (
	// slowReceiveBuffer is the SO_RCVBUF of a slow subscriber's socket,
	// in bytes. A small buffer fills after a few events, where Linux would
	// grow a default one up to the tcp_rmem maximum. Linux doubles the
	// value it is given.
	// NOTE: the sidecar's socket send buffer still takes up to the
	// tcp_wmem maximum (4 MiB by default) before its writes block. On
	// Linux 6.18 with default settings that was about 3.3 MB of events.
	slowReceiveBuffer = 8 << 10

	// slowEventBuffer is a slow subscriber's events buffer. The run never
	// reads it, so the connection's reader stops once it is full.
	slowEventBuffer = 1

	// slowEndTimeout bounds the wait, after a run, for the slow
	// subscribers' connections to end.
	slowEndTimeout = 5 * time.Second
)

// How a slow subscriber's connection ended, besides a close code.
const (
	slowEndNoCode = "no-code" // the connection ended without a close code
	slowEndOpen   = "open"    // still open slowEndTimeout after the run
)

// slowHTTPClient returns the HTTP client for the slow subscribers' upgrade
// requests, which connects with slowDialer.
func slowHTTPClient() *http.Client {
	return &http.Client{Transport: &http.Transport{DialContext: slowDialer().DialContext}}
}

// slowDialer returns a dialer whose connections have a receive buffer of
// slowReceiveBuffer, set before connecting so that the TCP window is sized
// for it.
func slowDialer() *net.Dialer {
	return &net.Dialer{
		Timeout: 10 * time.Second,
		Control: func(network, address string, c syscall.RawConn) error {
			var sockErr error
			err := c.Control(func(fd uintptr) {
				sockErr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, slowReceiveBuffer)
			})
			if err == nil {
				err = sockErr
			}
			if err != nil {
				return fmt.Errorf("set SO_RCVBUF on the socket to %s: %w", address, err)
			}
			return nil
		},
	}
}

// dialSlowSubscribers connects n slow subscribers to topic. The caller
// must not read their events until the run has ended, and must close them
// with closeReceivers.
func dialSlowSubscribers(ctx context.Context, t *target, n int, topic string) ([]*receiver, error) {
	slow, err := dialReceivers(ctx, t, n, topic, slowEventBuffer, slowHTTPClient())
	if err != nil {
		return nil, fmt.Errorf("slow subscribers: %w", err)
	}
	return slow, nil
}

// awaitSlowEnds resumes reading on every slow subscriber and counts how
// their connections ended: by the close code that the sidecar sent, such
// as "1013", by slowEndNoCode, or slowEndOpen when a connection is still
// open after timeout. Reading first drains the events that the sidecar
// wrote before it closed a connection, and the close frame comes after
// them. A connection that the sidecar had not closed before this call is
// then drained and, most likely, stays open.
func awaitSlowEnds(ctx context.Context, slow []*receiver, timeout time.Duration) map[string]int {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	ends := make([]string, len(slow))
	var wg sync.WaitGroup
	for i, r := range slow {
		wg.Go(func() { ends[i] = readToEnd(ctx, r) })
	}
	wg.Wait()

	counts := make(map[string]int)
	for _, end := range ends {
		counts[end]++
	}
	return counts
}

// readToEnd discards r's events until its subscription ends or ctx ends,
// and returns how the connection ended.
func readToEnd(ctx context.Context, r *receiver) string {
	for {
		select {
		case _, ok := <-r.sub.Events():
			if !ok {
				code := client.CloseStatus(r.sub.Err())
				if code < 0 {
					return slowEndNoCode
				}
				return strconv.Itoa(int(code))
			}
		case <-ctx.Done():
			return slowEndOpen
		}
	}
}

// formatSlowEnds formats counts as "1013×9 open×1", in key order, or "-"
// when counts is empty.
func formatSlowEnds(counts map[string]int) string {
	if len(counts) == 0 {
		return "-"
	}
	var parts []string
	for _, end := range slices.Sorted(maps.Keys(counts)) {
		parts = append(parts, fmt.Sprintf("%s×%d", end, counts[end]))
	}
	return strings.Join(parts, " ")
}
