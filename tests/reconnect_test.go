package tests

import (
	"bufio"
	"context"
	osexec "os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/pgsidecar/sidecar/client"
	"github.com/pgsidecar/sidecar/tests/pgtest"
)

// TestReconnectAcrossSidecarRestart restarts a real sidecar process while
// events are published with SQL, and checks that a client Stream ends up
// with every committed event exactly once, in id order.
func TestReconnectAcrossSidecarRestart(t *testing.T) {
	db := pgtest.NewDatabase(t)
	addr := freeAddr(t)
	env := []string{
		"DATABASE_URL=" + db,
		"SIDECAR_ADDR=" + addr,
		"SIDECAR_JWT_SECRET=" + testSecret,
		"SIDECAR_API_KEYS=" + testAPIKey,
	}
	serve := startServe(t, env, addr)

	var mu sync.Mutex
	connects := 0
	var drained bool
	c := client.Connect(t.Context(), "ws://"+addr+"/v1/ws", client.ReconnectOptions{
		Options:    client.Options{Token: token(t, "reconnect", []string{">"}, nil)},
		MinBackoff: 50 * time.Millisecond,
		MaxBackoff: time.Second,
		OnState: func(s client.State) {
			mu.Lock()
			defer mu.Unlock()
			switch s.Kind {
			case client.Connected:
				connects++
			case client.Disconnected:
				drained = drained || client.CloseStatus(s.Err) == 1012
			}
		},
	})
	t.Cleanup(func() { _ = c.Close() })

	ctx, cancel := context.WithTimeout(t.Context(), waitLong)
	defer cancel()
	stream, err := c.Subscribe(ctx, []string{"t"})
	if err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	got := collectStream(stream)

	stopPublishing := publishUntilStopped(t, db)

	waitFor(t, "20 events before the restart", func() bool { return got.count() >= 20 })
	if err := serve.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := serve.Wait(); err != nil {
		t.Fatalf("sidecar serve exited with %v after SIGTERM, want 0", err)
	}
	before := got.count()
	startServe(t, env, addr)
	t.Logf("the stream had %d events when the sidecar stopped, and %d when it was ready again", before, got.count())
	waitFor(t, "20 more events after the restart", func() bool { return got.count() >= before+20 })
	published := stopPublishing()

	sql := connect(t, db)
	rows, err := sql.Query(context.Background(), `
		SELECT t.first_id + e.ord FROM realtime.transactions t JOIN realtime.events e USING (segment)
		WHERE e.topic = 't' ORDER BY 1`)
	if err != nil {
		t.Fatal(err)
	}
	var want []int64
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		want = append(want, id)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if len(want) != published {
		t.Errorf("realtime.events has %d events on t, want the %d published", len(want), published)
	}

	t.Logf("%d events committed", len(want))
	waitFor(t, "every committed event at the stream", func() bool { return got.count() >= len(want) })
	if diff := cmp.Diff(got.ids(), want); diff != "" {
		t.Errorf("ids delivered to the stream (-got +want):\n%s", diff)
	}

	mu.Lock()
	defer mu.Unlock()
	if connects < 2 {
		t.Errorf("the client connected %d times, want at least 2", connects)
	}
	if !drained {
		t.Error("no disconnect with close code 1012 was reported")
	}
}

// startServe starts `sidecar serve` with env and waits until it is ready
// at addr. The test's cleanup kills it if it still runs.
func startServe(t *testing.T, env []string, addr string) *osexec.Cmd {
	t.Helper()
	serve := command(t, env, "serve")
	var serveLog syncBuffer
	serve.Stderr = &serveLog
	if err := serve.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = serve.Process.Kill()
		_ = serve.Wait()
		if t.Failed() {
			t.Logf("sidecar serve (pid %d) log:\n%s", serve.Process.Pid, serveLog.String())
		}
	})

	waitFor(t, "sidecar serve to become ready", func() bool {
		return command(t, env, "health", "http://"+addr).Run() == nil
	})
	return serve
}

// publishUntilStopped publishes one durable event per transaction on topic
// t, with the values 1, 2, ..., from a goroutine. The returned function
// stops it and returns how many events were committed.
func publishUntilStopped(t *testing.T, dbURL string) func() int {
	t.Helper()
	conn := connect(t, dbURL)
	var stop atomic.Bool
	var wg sync.WaitGroup
	var committed int
	wg.Go(func() {
		for i := 1; i <= 20000 && !stop.Load(); i++ {
			if _, err := conn.Exec(context.Background(), `SELECT realtime.publish('t', to_jsonb($1::int))`, i); err != nil {
				t.Errorf("publish %d: %v", i, err)
				return
			}
			committed = i
			time.Sleep(2 * time.Millisecond) // pacing, so that the restart falls between events
		}
	})
	return func() int {
		stop.Store(true)
		wg.Wait()
		return committed
	}
}

// streamCollector records the ids of the durable events a Stream delivers.
type streamCollector struct {
	mu   sync.Mutex
	list []int64
}

func collectStream(s *client.Stream) *streamCollector {
	c := &streamCollector{}
	go func() {
		for ev := range s.Events() {
			c.mu.Lock()
			c.list = append(c.list, ev.ID)
			c.mu.Unlock()
		}
	}()
	return c
}

func (c *streamCollector) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.list)
}

func (c *streamCollector) ids() []int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]int64(nil), c.list...)
}

func TestReconnectCommandLineSub(t *testing.T) {
	db := pgtest.NewDatabase(t)
	addr := freeAddr(t)
	env := []string{
		"DATABASE_URL=" + db,
		"SIDECAR_ADDR=" + addr,
		"SIDECAR_JWT_SECRET=" + testSecret,
		"SIDECAR_API_KEYS=" + testAPIKey,
		"SIDECAR_WS_URL=ws://" + addr + "/v1/ws",
		"SIDECAR_TOKEN=" + token(t, "cli", []string{">"}, nil),
	}
	serve := startServe(t, env, addr)

	sub := command(t, env, "sub", "t")
	stdout, err := sub.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var subLog syncBuffer
	sub.Stderr = &subLog
	if err := sub.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Process.Kill(); _ = sub.Wait() })
	lines := make(chan string, 16)
	go func() {
		scanner := bufio.NewScanner(stdout)
		for scanner.Scan() {
			lines <- scanner.Text()
		}
		close(lines)
	}()
	waitFor(t, "sidecar sub to subscribe", func() bool { return strings.Contains(subLog.String(), "subscribed") })

	sql := connect(t, db)
	exec(t, sql, `SELECT realtime.publish('t', '"before"')`)
	if line := nextLine(t, lines); !strings.Contains(line, `"before"`) {
		t.Fatalf("sidecar sub printed %q, want the event before the restart", line)
	}

	if err := serve.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := serve.Wait(); err != nil {
		t.Fatalf("sidecar serve exited with %v after SIGTERM, want 0", err)
	}
	exec(t, sql, `SELECT realtime.publish('t', '"while down"')`)
	startServe(t, env, addr)

	if line := nextLine(t, lines); !strings.Contains(line, `"while down"`) {
		t.Fatalf("sidecar sub printed %q, want the event published while the sidecar was down", line)
	}
	if log := subLog.String(); !strings.Contains(log, "reconnected") {
		t.Errorf("sidecar sub stderr has no reconnect notice:\n%s", log)
	}
}
