package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/pgsidecar/sidecar/auth"
	"github.com/pgsidecar/sidecar/client"
)

// The idle scenario opens many websocket connections that each hold one
// subscription and then stay silent, and measures how long opening them
// takes and how much memory the sidecar spends on each.

const (
	// idleDialConcurrency is how many idle connections are opened at once.
	idleDialConcurrency = 200

	// idleDialTimeout bounds the dial, welcome and subscribe of one idle
	// connection.
	idleDialTimeout = 30 * time.Second

	// idleSettle is the pause between the last subscribe result and the
	// second memory reading, so that the reading does not catch work that
	// trails the last result, such as the sidecar writing its log.
	idleSettle = 2 * time.Second

	// fileReserve is the number of file descriptors that the benchmark
	// keeps for everything but the idle connections: Postgres
	// connections, log files, the Go runtime and the listener.
	fileReserve = 256
)

// idleRun contains the figures of one run of the idle scenario. The
// memory figures are nil when the sidecar's process id is unknown.
type idleRun struct {
	Run         int `json:"run"`
	Connections int `json:"connections"`

	// OpenSeconds is the time from the first dial until the last
	// connection had its welcome and its subscribe result.
	OpenSeconds float64 `json:"open_s"`
	// CloseSeconds is how long closing every connection took on the
	// benchmark's side.
	CloseSeconds float64 `json:"close_s"`

	// The sidecar's VmRSS before the first dial and idleSettle after the
	// last subscribe result, and their difference divided by Connections.
	RSSBeforeKiB     *int64   `json:"rss_before_kib"`
	RSSAfterKiB      *int64   `json:"rss_after_kib"`
	KiBPerConnection *float64 `json:"kib_per_connection"`

	// GoKiBPerConnection is the growth of the sidecar's Go heap in use
	// plus goroutine stacks, each read right after a forced garbage
	// collection, divided by Connections. It leaves out garbage that
	// waits for collection and memory that the runtime has freed but the
	// kernel still counts, which the RSS figure includes. It is nil unless
	// the benchmark started the sidecar.
	GoKiBPerConnection *float64 `json:"go_kib_per_connection"`
}

// runIdle runs the idle scenario once. When the benchmark started the
// sidecar, every run after the first starts a fresh sidecar process,
// because the Go runtime keeps the memory that the previous run's
// connections freed and would reuse it for the new ones.
func runIdle(ctx context.Context, cfg config, t *target, run int) (idleRun, error) {
	if run > 1 && t.canRestartSidecar() {
		if err := t.restartSidecar(ctx); err != nil {
			return idleRun{}, err
		}
	}

	// One subject per connection, because the sidecar limits the
	// connections of one subject (--max-connections-per-subject).
	tokens := make([]string, cfg.Connections)
	for i := range tokens {
		token, err := auth.Sign(t.JWTSecret, "bench-idle-"+strconv.Itoa(i), auth.Realtime{Subscribe: []string{topicPrefix + ">"}}, time.Hour)
		if err != nil {
			return idleRun{}, fmt.Errorf("sign token for connection %d: %w", i, err)
		}
		tokens[i] = token
	}
	topic := newTopic(scenarioIdle, run)

	x := idleRun{Run: run, Connections: cfg.Connections}
	// A sidecar without profiling endpoints, such as an older version
	// given with --sidecar-bin, leaves the Go memory figure out.
	goBefore, err := sidecarGoMemory(ctx, t.DebugURL)
	if err != nil {
		goBefore = nil
	}
	before, err := sidecarRSS(t.SidecarPID)
	if err != nil {
		return idleRun{}, err
	}

	conns := make([]*client.Conn, cfg.Connections)
	defer func() { closeIdle(conns) }() // no-op after the measured close

	start := time.Now()
	if err := openIdle(ctx, t.WSURL, tokens, topic, conns); err != nil {
		return idleRun{}, err
	}
	x.OpenSeconds = round3(time.Since(start).Seconds())

	if before != nil {
		select {
		case <-time.After(idleSettle):
		case <-ctx.Done():
			return idleRun{}, fmt.Errorf("wait %s before reading the sidecar's memory: %w", idleSettle, ctx.Err())
		}
		after, err := sidecarRSS(t.SidecarPID)
		if err != nil {
			return idleRun{}, err
		}
		perConn := round3(float64(*after-*before) / float64(cfg.Connections))
		x.RSSBeforeKiB, x.RSSAfterKiB, x.KiBPerConnection = before, after, &perConn
	}
	if goBefore != nil {
		goAfter, err := sidecarGoMemory(ctx, t.DebugURL)
		if err != nil {
			return idleRun{}, err
		}
		perConn := round3(float64(*goAfter-*goBefore) / 1024 / float64(cfg.Connections))
		x.GoKiBPerConnection = &perConn
	}

	if cfg.IdleHold > 0 {
		select {
		case <-time.After(cfg.IdleHold):
		case <-ctx.Done():
			return idleRun{}, fmt.Errorf("hold the connections for %s: %w", cfg.IdleHold, ctx.Err())
		}
	}

	start = time.Now()
	closeIdle(conns)
	x.CloseSeconds = round3(time.Since(start).Seconds())
	return x, nil
}

// openIdle opens one connection per token into conns, each subscribed to
// topic plus its index, idleDialConcurrency at a time. On error the caller
// still closes the connections that conns holds.
func openIdle(ctx context.Context, wsURL string, tokens []string, topic string, conns []*client.Conn) error {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(idleDialConcurrency)
	for i, token := range tokens {
		g.Go(func() error {
			dialCtx, cancel := context.WithTimeout(gctx, idleDialTimeout)
			defer cancel()

			// A one-event buffer keeps the benchmark's own memory small,
			// and no event is published.
			conn, err := client.Dial(dialCtx, wsURL, client.Options{Token: token, EventBuffer: 1})
			if err != nil {
				return fmt.Errorf("connection %d: %w", i, err)
			}
			conns[i] = conn

			own := topic + ".c" + strconv.Itoa(i)
			if _, err := conn.Subscribe(dialCtx, []string{own}); err != nil {
				return fmt.Errorf("connection %d: subscribe to %s: %w", i, own, err)
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return fmt.Errorf("open %d idle connections: %w", len(tokens), err)
	}
	return nil
}

// closeIdle closes every connection in conns without the close handshake
// and sets the entries to nil. nil entries are skipped.
func closeIdle(conns []*client.Conn) {
	var wg sync.WaitGroup
	for i, c := range conns {
		if c != nil {
			wg.Go(func() { _ = c.CloseNow() })
			conns[i] = nil
		}
	}
	wg.Wait()
}

// sidecarGoMemory forces a garbage collection in the sidecar whose
// profiling endpoints are at debugURL, and returns its Go heap in use plus
// its goroutine stacks in bytes, or nil when debugURL is empty.
func sidecarGoMemory(ctx context.Context, debugURL string) (*int64, error) {
	if debugURL == "" {
		return nil, nil
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()

	// gc=1 runs a collection before the figures are taken.
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, debugURL+"/debug/pprof/heap?gc=1&debug=1", nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("read the sidecar's Go memory figures: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil || resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("read the sidecar's Go memory figures: status %d, %v", resp.StatusCode, err)
	}

	total, err := parseGoMemory(string(body))
	if err != nil {
		return nil, fmt.Errorf("%s/debug/pprof/heap: %w", debugURL, err)
	}
	return &total, nil
}

// parseGoMemory adds the "# HeapInuse = N" and "# Stack = N / M" lines of
// a heap profile in its text form.
func parseGoMemory(profile string) (int64, error) {
	var heap, stack int64 = -1, -1
	for line := range strings.Lines(profile) {
		if rest, ok := strings.CutPrefix(line, "# HeapInuse = "); ok {
			heap, _ = strconv.ParseInt(strings.TrimSpace(rest), 10, 64)
		}
		if rest, ok := strings.CutPrefix(line, "# Stack = "); ok {
			inuse, _, _ := strings.Cut(rest, " ")
			stack, _ = strconv.ParseInt(strings.TrimSpace(inuse), 10, 64)
		}
	}
	if heap < 0 || stack < 0 {
		return 0, errors.New("no HeapInuse or Stack line")
	}
	return heap + stack, nil
}

// sidecarRSS returns the VmRSS of process pid in KiB, or nil when pid is
// 0 (unknown).
func sidecarRSS(pid int) (*int64, error) {
	if pid == 0 {
		return nil, nil
	}
	path := "/proc/" + strconv.Itoa(pid) + "/status"
	status, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read the sidecar's memory use: %w", err)
	}
	kib, err := parseVmRSS(string(status))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &kib, nil
}

// parseVmRSS returns the value of the VmRSS line of a /proc/PID/status
// text, such as "VmRSS:\t   12345 kB", in KiB. The kernel's "kB" means
// 1024 bytes.
func parseVmRSS(status string) (int64, error) {
	for line := range strings.Lines(status) {
		rest, ok := strings.CutPrefix(line, "VmRSS:")
		if !ok {
			continue
		}
		fields := strings.Fields(rest)
		if len(fields) != 2 || fields[1] != "kB" {
			return 0, fmt.Errorf("VmRSS line %q: expected a number followed by kB", strings.TrimSpace(line))
		}
		kib, err := strconv.ParseInt(fields[0], 10, 64)
		if err != nil || kib < 0 {
			return 0, fmt.Errorf("VmRSS line %q: invalid number of kB", strings.TrimSpace(line))
		}
		return kib, nil
	}
	return 0, errors.New("no VmRSS line, which the kernel omits for kernel threads and exited processes")
}

// raiseFileLimit raises the soft RLIMIT_NOFILE of this process to its hard
// limit and returns the new soft limit. A sidecar started afterwards
// inherits it, because the Go runtime (syscall.Setrlimit, as of Go 1.26)
// stops passing the original soft limit to child processes once the
// program has called Setrlimit itself.
func raiseFileLimit() (uint64, error) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, fmt.Errorf("read the open files limit: %w", err)
	}
	lim.Cur = lim.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, fmt.Errorf("raise the open files limit to %d: %w", lim.Max, err)
	}
	return lim.Cur, nil
}

// checkFileLimit rejects a number of connections that would not fit in
// limit open files in one process, leaving fileReserve for the rest.
func checkFileLimit(connections int, limit uint64) error {
	if need := uint64(connections) + fileReserve; need > limit {
		return fmt.Errorf("--connections %d needs about %d open files in the benchmark and in the sidecar, but the hard limit (RLIMIT_NOFILE, ulimit -Hn) is %d: use at most %d connections or raise the hard limit", connections, need, limit, max(int64(limit)-fileReserve, 0))
	}
	return nil
}
