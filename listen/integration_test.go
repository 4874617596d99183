package listen

import (
	"context"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/jackc/pgx/v5"
)

// waitLimit bounds every wait for the listener in the database tests. It
// is generous on purpose: these tests check what happens, not how fast.
const waitLimit = 15 * time.Second

func requireCluster(t *testing.T) {
	t.Helper()
	if cluster == nil {
		t.Skipf("no postgres: %v", clusterErr)
	}
}

func connectPostgres(ctx context.Context) (*pgx.Conn, error) {
	return pgx.Connect(ctx, cluster.URL("postgres"))
}

// startListener runs a Listener built from cfg until the test ends, then
// checks that Run returned nil. It returns once the Listener is ready.
func startListener(t *testing.T, cfg Config) *Listener {
	t.Helper()

	if cfg.Connect == nil {
		cfg.Connect = connectPostgres
	}
	if cfg.MaxBackoff == 0 {
		cfg.MaxBackoff = 500 * time.Millisecond
	}
	cfg.Logger = slog.New(slog.NewTextHandler(t.Output(), nil))

	l, err := New(cfg)
	if err != nil {
		t.Fatalf("New = %v", err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx) }()

	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run = %v, want nil after cancel", err)
			}
		case <-time.After(waitLimit):
			t.Errorf("Run did not return within %v of cancel", waitLimit)
		}
	})

	select {
	case <-l.Ready():
	case <-time.After(waitLimit):
		t.Fatalf("Ready() not closed within %v; Status() = %+v", waitLimit, l.Status())
	}
	return l
}

func nextEvent(t *testing.T, l *Listener) Event {
	t.Helper()

	select {
	case ev, ok := <-l.Events():
		if !ok {
			t.Fatal("Events() closed, want an event")
		}
		return ev
	case <-time.After(waitLimit):
		t.Fatalf("no event within %v; Status() = %+v", waitLimit, l.Status())
		return Event{}
	}
}

// openConn opens a connection for sending notifications and administration,
// closed when the test ends.
func openConn(t *testing.T) *pgx.Conn {
	t.Helper()

	conn, err := connectPostgres(t.Context())
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func notify(t *testing.T, conn *pgx.Conn, channel, payload string) {
	t.Helper()

	if _, err := conn.Exec(t.Context(), "select pg_notify($1, $2)", channel, payload); err != nil {
		t.Fatalf("pg_notify(%q, %q): %v", channel, payload, err)
	}
}

// eventually polls cond until it is true, failing the test after waitLimit.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()

	deadline := time.Now().Add(waitLimit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not true within %v", what, waitLimit)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestListenerDeliversInOrder(t *testing.T) {
	requireCluster(t)
	l := startListener(t, Config{Channels: []string{"orders", "users"}})
	conn := openConn(t)

	if got, want := nextEvent(t, l), (Event{Kind: Resync, Generation: 1}); got != want {
		t.Fatalf("first event = %+v, want %+v", got, want)
	}

	var want []Event
	for i := range 50 {
		channel := []string{"orders", "users"}[i%2]
		payload := `{"id":` + strconv.Itoa(i) + `}`
		notify(t, conn, channel, payload)
		want = append(want, Event{Kind: Notification, Channel: channel, Payload: payload, Generation: 1})
	}

	var got []Event
	for range want {
		got = append(got, nextEvent(t, l))
	}
	if diff := cmp.Diff(got, want); diff != "" {
		t.Errorf("events (-got +want):\n%s", diff)
	}

	s := l.Status()
	if !s.Connected || s.BackendPID == 0 || s.Generation != 1 || s.Dropped != 0 {
		t.Errorf("Status() = %+v, want connected with a backend pid, generation 1, nothing dropped", s)
	}
}

func TestListenerQuotesMixedCaseChannel(t *testing.T) {
	requireCluster(t)
	l := startListener(t, Config{Channels: []string{"MixedCase", `we"ird`}})
	conn := openConn(t)
	nextEvent(t, l) // Resync

	// Notifications keep their order, so if the lower-case one had been
	// delivered it would arrive first.
	notify(t, conn, "mixedcase", "folded")
	notify(t, conn, "MixedCase", "exact")
	notify(t, conn, `we"ird`, "quote")

	want := []Event{
		{Kind: Notification, Channel: "MixedCase", Payload: "exact", Generation: 1},
		{Kind: Notification, Channel: `we"ird`, Payload: "quote", Generation: 1},
	}
	got := []Event{nextEvent(t, l), nextEvent(t, l)}
	if diff := cmp.Diff(got, want); diff != "" {
		t.Errorf("events (-got +want):\n%s", diff)
	}
}

// notifyContinuously sends pg_notify(channel, n) with n = 0, 1, 2, ... every
// few milliseconds on its own connection until the returned stop function
// is called, skipping sends that fail while the server is unavailable.
func notifyContinuously(t *testing.T, channel string) (stop func()) {
	t.Helper()

	conn := openConn(t)
	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup

	wg.Go(func() {
		ticker := time.NewTicker(5 * time.Millisecond)
		defer ticker.Stop()

		for n := 0; n < 10000; n++ {
			select {
			case <-ctx.Done():
				return
			case <-ticker.C:
			}
			_, _ = conn.Exec(ctx, "select pg_notify($1, $2)", channel, strconv.Itoa(n))
		}
	})

	return func() {
		cancel()
		wg.Wait()
	}
}

func TestListenerReconnectsAfterTerminate(t *testing.T) {
	requireCluster(t)
	l := startListener(t, Config{Channels: []string{"ticks"}})
	admin := openConn(t)
	stop := notifyContinuously(t, "ticks")
	defer stop()

	oldPID := l.Status().BackendPID
	var (
		generation uint64 // of the latest Resync
		last       = -1   // latest payload
		terminated bool
	)
	for {
		ev := nextEvent(t, l)

		if ev.Kind == Resync {
			if ev.Generation <= generation {
				t.Fatalf("Resync generation %d after %d, want it to grow", ev.Generation, generation)
			}
			generation = ev.Generation
			continue
		}

		if ev.Generation != generation {
			t.Fatalf("notification %+v after Resync %d, want the Resync of its own connection first", ev, generation)
		}
		n, err := strconv.Atoi(ev.Payload)
		if err != nil || n <= last {
			t.Fatalf("payload %q after %d, want increasing numbers", ev.Payload, last)
		}
		last = n

		if generation >= 2 {
			break
		}
		if !terminated {
			var ok bool
			if err := admin.QueryRow(t.Context(), "select pg_terminate_backend($1)", oldPID).Scan(&ok); err != nil || !ok {
				t.Fatalf("pg_terminate_backend(%d) = %v, %v, want true", oldPID, ok, err)
			}
			terminated = true
		}
	}

	s := l.Status()
	if !s.Connected || s.Generation != 2 || s.BackendPID == oldPID || s.Reconnects < 1 {
		t.Errorf("Status() = %+v, want connected, generation 2, a new backend pid, at least one reconnect", s)
	}
	if s.LastError == "" {
		t.Error("Status().LastError is empty, want the error that ended the first connection")
	}
}

func TestListenerReconnectsAfterServerRestart(t *testing.T) {
	requireCluster(t)
	l := startListener(t, Config{Channels: []string{"restart"}})
	nextEvent(t, l) // Resync 1

	if err := cluster.Stop(t.Context()); err != nil {
		t.Fatalf("Stop = %v", err)
	}
	eventually(t, "Status().Connected is false after Stop", func() bool { return !l.Status().Connected })

	if err := cluster.Restart(t.Context()); err != nil {
		t.Fatalf("Restart = %v", err)
	}

	ev := nextEvent(t, l)
	if ev.Kind != Resync || ev.Generation < 2 {
		t.Fatalf("first event after restart = %+v, want a Resync with generation 2 or more", ev)
	}

	notify(t, openConn(t), "restart", "back")
	want := Event{Kind: Notification, Channel: "restart", Payload: "back", Generation: ev.Generation}
	if got := nextEvent(t, l); got != want {
		t.Errorf("event after restart = %+v, want %+v", got, want)
	}
	if s := l.Status(); !s.Connected || s.Reconnects < 1 {
		t.Errorf("Status() = %+v, want connected after at least one reconnect", s)
	}
}

func TestListenerPingDetectsFrozenBackend(t *testing.T) {
	requireCluster(t)
	l := startListener(t, Config{
		Channels:     []string{"frozen"},
		PingInterval: 200 * time.Millisecond,
		PingTimeout:  200 * time.Millisecond,
	})
	nextEvent(t, l) // Resync 1

	// A stopped backend keeps its socket open but never replies, like a
	// peer behind a dead network path.
	pid := int(l.Status().BackendPID)
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Skipf("cannot stop backend %d: %v", pid, err)
	}
	t.Cleanup(func() { syscall.Kill(pid, syscall.SIGCONT) })

	ev := nextEvent(t, l)
	if ev.Kind != Resync || ev.Generation != 2 {
		t.Fatalf("event after freezing the backend = %+v, want Resync with generation 2", ev)
	}
	if s := l.Status(); !strings.Contains(s.LastError, "ping") {
		t.Errorf("Status().LastError = %q, want the ping failure", s.LastError)
	}
}

func TestListenerDropsWhenBufferFull(t *testing.T) {
	requireCluster(t)
	l := startListener(t, Config{Channels: []string{"flood"}, Buffer: 4})
	conn := openConn(t)

	// The test does not read yet, so the Resync and 3 notifications fill
	// the buffer and the other 17 are dropped.
	for i := range 20 {
		notify(t, conn, "flood", strconv.Itoa(i))
	}
	eventually(t, "Status().Dropped reaches 17", func() bool { return l.Status().Dropped >= 17 })

	want := []Event{
		{Kind: Resync, Generation: 1},
		{Kind: Notification, Channel: "flood", Payload: "0", Generation: 1},
		{Kind: Notification, Channel: "flood", Payload: "1", Generation: 1},
		{Kind: Notification, Channel: "flood", Payload: "2", Generation: 1},
		{Kind: Resync, Generation: 1}, // owed for the drops, delivered without a new notification
	}
	var got []Event
	for range want {
		got = append(got, nextEvent(t, l))
	}
	if diff := cmp.Diff(got, want); diff != "" {
		t.Errorf("events (-got +want):\n%s", diff)
	}

	notify(t, conn, "flood", "after")
	wantAfter := Event{Kind: Notification, Channel: "flood", Payload: "after", Generation: 1}
	if got := nextEvent(t, l); got != wantAfter {
		t.Errorf("event after catching up = %+v, want %+v", got, wantAfter)
	}
	if got := l.Status().Dropped; got != 17 {
		t.Errorf("Status().Dropped = %d, want 17", got)
	}
}

func TestRunStopsOnCancel(t *testing.T) {
	requireCluster(t)

	l, err := New(Config{Connect: connectPostgres, Channels: []string{"stop"}})
	if err != nil {
		t.Fatalf("New = %v", err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx) }()

	select {
	case <-l.Ready():
	case <-time.After(waitLimit):
		t.Fatalf("Ready() not closed within %v; Status() = %+v", waitLimit, l.Status())
	}
	pid := l.Status().BackendPID

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run = %v, want nil after cancel", err)
		}
	case <-time.After(waitLimit):
		t.Fatalf("Run did not return within %v of cancel", waitLimit)
	}

	for range l.Events() {
		// Drain what was delivered. The loop ends only if Run closed the channel.
	}
	if s := l.Status(); s.Connected || s.BackendPID != 0 {
		t.Errorf("Status() after Run returned = %+v, want disconnected", s)
	}

	admin, err := connectPostgres(t.Context())
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	eventually(t, "listener backend has exited", func() bool {
		var n int
		err := admin.QueryRow(t.Context(), "select count(*) from pg_stat_activity where pid = $1", pid).Scan(&n)
		return err == nil && n == 0
	})
	admin.Close(t.Context())

	if err := checkNoLeaks(waitLimit); err != nil {
		t.Error(err)
	}
}
