package tests

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/pgsidecar/sidecar/client"
	"github.com/pgsidecar/sidecar/tests/pgtest"
)

// drainClients is the number of websockets connected to the instance that
// is stopped; drainEvents are published while it drains.
const (
	drainClients = 1000
	drainEvents  = 300
	drainSpread  = 3 * time.Second
	drainTimeout = 10 * time.Second
)

// A SIGTERM during load: the instance turns unready and refuses new
// websockets at once, closes every websocket with 1012 within the spread,
// and exits 0. Each client resumes on the other instance from its last id
// and ends up with every durable event published meanwhile, once and in
// order.
func TestSIGTERMDrainsToAnotherInstance(t *testing.T) {
	if testing.Short() {
		t.Skip("starts 1,000 websockets")
	}
	db := pgtest.NewDatabase(t)
	other := startSidecar(t, db)

	addr := freeAddr(t)
	base := "http://" + addr
	cmd := command(t, []string{
		"DATABASE_URL=" + db,
		"SIDECAR_ADDR=" + addr,
		"SIDECAR_JWT_SECRET=" + testSecret,
		"SIDECAR_API_KEYS=" + testAPIKey,
		"SIDECAR_DRAIN_SPREAD=" + drainSpread.String(),
		"SIDECAR_DRAIN_TIMEOUT=" + drainTimeout.String(),
		"SIDECAR_LOG_LEVEL=warn",
	}, "serve")
	var logs syncBuffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("draining instance's log:\n%s", logs.String())
		}
	})
	waitFor(t, "the instance to be ready", func() bool { return statusOf(base+"/readyz") == http.StatusOK })

	clients := connectDrainClients(t, "ws://"+addr+"/v1/ws", other.ws)
	pg := connect(t, db)

	// Publish throughout the drain, 10 ms apart.
	published := make(chan error, 1)
	go func() {
		var err error
		for i := range drainEvents {
			if _, e := pg.Exec(context.Background(), `SELECT realtime.publish('drain.e', $1::jsonb)`, fmt.Sprintf(`{"n":%d}`, i)); e != nil {
				err = e
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		published <- err
	}()

	time.Sleep(500 * time.Millisecond)
	signalled := time.Now()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "/readyz to turn 503", func() bool { return statusOf(base+"/readyz") == http.StatusServiceUnavailable })
	if code := statusOf(base + "/v1/ws"); code != http.StatusServiceUnavailable {
		t.Errorf("a new websocket during the drain got %d, want 503", code)
	}

	select {
	case err := <-exited:
		exited <- err // for the cleanup
		if err != nil {
			t.Errorf("the draining instance exited with %v, want status 0", err)
		}
	case <-time.After(drainTimeout + waitLong):
		t.Fatalf("the instance did not exit within %s of SIGTERM", drainTimeout+waitLong)
	}
	if err := <-published; err != nil {
		t.Fatalf("publishing: %v", err)
	}

	var want []int64
	rows, err := pg.Query(context.Background(), `SELECT t.first_id + e.ord FROM realtime.events e JOIN realtime.transactions t USING (segment) WHERE e.topic = 'drain.e' ORDER BY 1`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		want = append(want, id)
	}
	if rows.Err() != nil || len(want) != drainEvents {
		t.Fatalf("events in the table = %d (%v), want %d", len(want), rows.Err(), drainEvents)
	}

	var wg sync.WaitGroup
	for _, c := range clients {
		wg.Go(func() { c.finish(t, want) })
	}
	wg.Wait()

	codes := map[int]int{}
	earliest, latest := time.Duration(1<<62), time.Duration(0)
	for _, c := range clients {
		codes[c.closeCode]++
		earliest = min(earliest, c.closedAt.Sub(signalled))
		latest = max(latest, c.closedAt.Sub(signalled))
	}
	if codes[1012] != drainClients {
		t.Errorf("close codes of the drained websockets = %v, want 1012 for all %d", codes, drainClients)
	}
	if latest > drainTimeout {
		t.Errorf("the last websocket closed %s after SIGTERM, want within --drain-timeout %s", latest, drainTimeout)
	}
	if latest-earliest < drainSpread/3 {
		t.Errorf("websockets closed between %s and %s after SIGTERM, want them spread over the %s window", earliest, latest, drainSpread)
	}
	t.Logf("closes from %s to %s after SIGTERM; spread %s", earliest.Round(time.Millisecond), latest.Round(time.Millisecond), drainSpread)
}

// drainClient is one subscriber that starts on the draining instance and
// resumes on the other.
type drainClient struct {
	first, second *client.Conn
	sub           *client.Subscription
	otherURL      string
	token         string

	ids []int64
	// closed is closed once the first connection has ended, after closedAt
	// and closeCode are set.
	closed    chan struct{}
	closeCode int
	closedAt  time.Time
}

// watch records when and with which code the first connection ends.
func (c *drainClient) watch() {
	<-c.first.Done()
	c.closedAt = time.Now()
	c.closeCode = int(client.CloseStatus(c.first.Err()))
	close(c.closed)
}

func connectDrainClients(t *testing.T, url, otherURL string) []*drainClient {
	t.Helper()

	clients := make([]*drainClient, drainClients)
	g, ctx := errgroup.WithContext(context.Background())
	g.SetLimit(50)
	for i := range clients {
		g.Go(func() error {
			tok := token(t, fmt.Sprintf("drain-%d", i), []string{"drain.>"}, nil)
			conn, err := client.Dial(ctx, url, client.Options{Token: tok})
			if err != nil {
				return fmt.Errorf("client %d: %w", i, err)
			}
			sub, err := conn.Subscribe(ctx, []string{"drain.>"}, client.WithBuffer(drainEvents+16))
			if err != nil {
				return fmt.Errorf("client %d: subscribe: %w", i, err)
			}
			clients[i] = &drainClient{first: conn, sub: sub, otherURL: otherURL, token: tok, closed: make(chan struct{})}
			go clients[i].watch()
			return nil
		})
	}
	err := g.Wait()
	t.Cleanup(func() {
		for _, c := range clients {
			if c != nil {
				_ = c.first.CloseNow()
				if c.second != nil {
					_ = c.second.CloseNow()
				}
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	return clients
}

// finish reads until the first connection ends, resumes on the other
// instance after the last id seen, and reads until it has every id of
// want. It reports what went wrong with t.Errorf.
func (c *drainClient) finish(t *testing.T, want []int64) {
	ctx, cancel := context.WithTimeout(context.Background(), drainTimeout+2*waitLong)
	defer cancel()

	read := func(sub *client.Subscription) bool {
		for len(c.ids) < len(want) {
			select {
			case ev, ok := <-sub.Events():
				if !ok {
					return false
				}
				c.ids = append(c.ids, ev.ID)
			case <-ctx.Done():
				return false
			}
		}
		return true
	}

	if !read(c.sub) {
		<-c.closed

		var since int64
		if len(c.ids) > 0 {
			since = c.ids[len(c.ids)-1]
		}
		conn, err := client.Dial(ctx, c.otherURL, client.Options{Token: c.token})
		if err != nil {
			t.Errorf("resume on the other instance: %v", err)
			return
		}
		c.second = conn
		sub, err := conn.Subscribe(ctx, []string{"drain.>"}, client.WithSince(since), client.WithBuffer(drainEvents+16))
		if err != nil {
			t.Errorf("resume on the other instance: subscribe since %d: %v", since, err)
			return
		}
		read(sub)
	} else {
		// Every event arrived before the close; still wait for it.
		select {
		case <-c.closed:
		case <-ctx.Done():
		}
	}

	if !slices.Equal(c.ids, want) {
		t.Errorf("a client received %d events, want the %d published, once each and in order; first difference near %v", len(c.ids), len(want), firstDifference(c.ids, want))
	}
}

func firstDifference(got, want []int64) string {
	for i := range min(len(got), len(want)) {
		if got[i] != want[i] {
			return fmt.Sprintf("index %d: got id %d, want %d", i, got[i], want[i])
		}
	}
	return fmt.Sprintf("the first %d match", min(len(got), len(want)))
}

// statusOf returns the status of GET url, or 0 when the request fails.
func statusOf(url string) int {
	resp, err := http.Get(url)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}
