package tests

import (
	"context"
	"fmt"
	"net"
	"net/http"
	osexec "os/exec"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/pgsidecar/sidecar/client"
	"github.com/pgsidecar/sidecar/server"
	"github.com/pgsidecar/sidecar/tests/pgtest"
)

// The chaos tests break Postgres, the LISTEN connection, the network or
// the sidecar while events flow, then compare what each client received
// with the committed rows of realtime.events. Each runs on a cluster of its
// own, with fsync and synchronous_commit on, so that a crash keeps every
// acknowledged commit.

// chaosReplayLimit lets a client that was away for several seconds of
// load resume in one subscribe. The default replay limit could refuse such
// a resume, and that limit is tested elsewhere.
const chaosReplayLimit = 100_000

// TestChaosPostgresCrashUnderLoad kills every Postgres process three times
// while about 1,000 events per second are published, then restarts it.
func TestChaosPostgresCrashUnderLoad(t *testing.T) {
	cluster := pgtest.NewCluster(t)
	sc := startSidecar(t, cluster.URL, func(c *server.Config) {
		c.UnreadyAfter = time.Hour
		c.ReplayLimit = chaosReplayLimit
	})

	const pattern = "crash.>"
	stayed := []*collector{
		newCollector(subscribe(t, dial(t, sc), []string{pattern})),
		newCollector(subscribe(t, dial(t, sc), []string{pattern})),
	}
	moverConn := dial(t, sc)
	mover := newCollector(subscribe(t, moverConn, []string{pattern}))

	pub := startPublisher(t, cluster.URL, "crash", 1000)
	started := time.Now()
	stayed[0].waitForMore(t, 500)

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for crash := 1; crash <= 3; crash++ {
		if crash == 1 {
			// This client leaves during the first crash and comes back
			// after the second.
			moverConn.Close()
			mover.waitEnded(t)
		}

		if err := cluster.Kill(); err != nil {
			t.Fatal(err)
		}
		// Postgres stays down for a moment while the publishers fail.
		time.Sleep(300 * time.Millisecond)
		before := stayed[0].count()
		if err := cluster.Restart(ctx); err != nil {
			t.Fatal(err)
		}
		restarted := time.Now()
		waitFor(t, "the first event after the restart", func() bool { return stayed[0].count() > before })
		t.Logf("crash %d: the first event reached a subscriber %s after Postgres accepted connections again",
			crash, time.Since(restarted).Round(time.Millisecond))

		if crash == 2 {
			resumed := subscribe(t, dial(t, sc), []string{pattern},
				client.WithSince(mover.resumePoint()), client.WithEpoch(mover.epoch))
			mover.follow(resumed)
		}
		stayed[0].waitForMore(t, 500)
	}
	pub.Stop()

	table := committedEvents(t, cluster.URL, "crash.")
	t.Logf("%d events committed in %s, outages included; the publisher saw %d commits acknowledged and %d failures",
		len(table), time.Since(started).Round(time.Millisecond), pub.commits.Load(), pub.failures.Load())
	for i, c := range stayed {
		d := checkDelivery(t, fmt.Sprintf("connected client %d", i+1), c, table)
		t.Logf("connected client %d: %d events, %s", i+1, c.count(), d)
	}
	d := checkDelivery(t, "the client that resumed", mover, table)
	t.Logf("resumed client: %d events, %s", mover.count(), d)
}

// TestChaosListenerTerminatedUnderLoad ends the sidecar's LISTEN session
// with pg_terminate_backend three times under load: catch-up must fill
// each gap.
func TestChaosListenerTerminatedUnderLoad(t *testing.T) {
	cluster := pgtest.NewCluster(t)
	// The LISTEN session runs LISTEN and then its liveness query, so
	// pg_stat_activity.query does not identify it for long. Its
	// application_name does.
	const listenerName = "chaos-listener"
	sc := startSidecar(t, cluster.URL, func(c *server.Config) {
		c.ListenDatabaseURL = withQuery(t, cluster.URL, "application_name", listenerName)
	})

	const pattern = "term.>"
	clients := []*collector{
		newCollector(subscribe(t, dial(t, sc), []string{pattern})),
		newCollector(subscribe(t, dial(t, sc), []string{pattern})),
	}
	admin := connect(t, cluster.URL)
	pub := startPublisher(t, cluster.URL, "term", 1000)

	for round := 1; round <= 3; round++ {
		clients[0].waitForMore(t, 300)

		beforeTerminate := time.Now()
		var terminated int
		err := admin.QueryRow(context.Background(), `
			SELECT count(*) FILTER (WHERE pg_terminate_backend(pid))
			  FROM pg_stat_activity
			 WHERE application_name = $1`, listenerName).Scan(&terminated)
		if err != nil {
			t.Fatal(err)
		}
		if terminated != 1 {
			t.Fatalf("round %d: pg_terminate_backend ended %d sessions named %s, want the one LISTEN session", round, terminated, listenerName)
		}

		waitFor(t, "the listener to reconnect", func() bool {
			connected, since := listenerStatus(t, sc)
			return connected && since.After(beforeTerminate)
		})
		t.Logf("round %d: the listener reconnected %s after pg_terminate_backend",
			round, time.Since(beforeTerminate).Round(time.Millisecond))
	}
	clients[0].waitForMore(t, 300)
	pub.Stop()

	table := committedEvents(t, cluster.URL, "term.")
	for i, c := range clients {
		d := checkDelivery(t, fmt.Sprintf("client %d", i+1), c, table)
		t.Logf("client %d: %d of %d committed events, %s", i+1, c.count(), len(table), d)
	}
}

// TestChaosSilentCutOfListener routes the LISTEN connection through a
// proxy that stops forwarding bytes without closing anything. Only the
// listener's liveness query (a ping after 5 s of silence, which times out
// after 3 s by default) can notice.
func TestChaosSilentCutOfListener(t *testing.T) {
	cluster := pgtest.NewCluster(t)
	px := startProxy(t, fmt.Sprintf("127.0.0.1:%d", cluster.Port()))
	sc := startSidecar(t, cluster.URL, func(c *server.Config) {
		c.ListenDatabaseURL = withHost(t, cluster.URL, px.Addr())
		c.UnreadyAfter = time.Hour
	})

	sub := newCollector(subscribe(t, dial(t, sc), []string{"cut.>"}))
	pub := startPublisher(t, cluster.URL, "cut", 500)
	sub.waitForMore(t, 300)

	px.BlackHole()
	cutAt := time.Now()
	// The bound is generous: with the default ping settings the cut is
	// detected after about 8 s (5 s of silence, then a 3 s ping timeout).
	waitWithin(t, 45*time.Second, "/readyz to report the listener disconnected", func() bool {
		connected, _ := listenerStatus(t, sc)
		return !connected
	})
	detection := time.Since(cutAt)
	t.Logf("the listener detected the silent cut after %s", detection.Round(time.Millisecond))

	beforeHeal := sub.count()
	duringCut := len(eventsAfter(committedEvents(t, cluster.URL, "cut."), sub.resumePoint()))
	if duringCut == 0 {
		t.Fatal("no event was committed while the listener was cut off")
	}
	t.Logf("%d events were committed and not delivered while the listener was cut off", duringCut)
	px.Heal()
	healedAt := time.Now()
	waitFor(t, "the first event after the cut healed", func() bool { return sub.count() > beforeHeal })
	t.Logf("the first event reached the subscriber %s after the cut healed", time.Since(healedAt).Round(time.Millisecond))

	sub.waitForMore(t, 300)
	pub.Stop()

	table := committedEvents(t, cluster.URL, "cut.")
	d := checkDelivery(t, "the subscriber", sub, table)
	t.Logf("subscriber: %d of %d committed events, %s", sub.count(), len(table), d)
}

// serveProcess is `sidecar serve` running as a child process on a fixed
// loopback address, so that it can be killed and started again there.
type serveProcess struct {
	t   testing.TB
	env []string
	sc  *sidecar // base and ws only: the server runs in the child
	cmd *osexec.Cmd
	log *syncBuffer
	// exited is closed once the running process has exited.
	exited chan struct{}
}

func startServeProcess(t testing.TB, env []string, addr string) *serveProcess {
	t.Helper()
	p := &serveProcess{
		t:   t,
		env: append(env, "SIDECAR_ADDR="+addr),
		sc:  &sidecar{base: "http://" + addr, ws: "ws://" + addr + "/v1/ws"},
	}
	p.start()
	t.Cleanup(func() {
		if p.cmd != nil {
			p.kill()
		}
	})
	return p
}

// start runs serve and waits until /readyz is 200.
func (p *serveProcess) start() {
	p.t.Helper()
	p.log = &syncBuffer{}
	p.cmd = command(p.t, p.env, "serve")
	p.cmd.Stderr = p.log
	if err := p.cmd.Start(); err != nil {
		p.t.Fatal(err)
	}
	exited := make(chan struct{})
	p.exited = exited
	cmd := p.cmd
	go func() { cmd.Wait(); close(exited) }()

	deadline := time.Now().Add(waitLong)
	for {
		if code, _ := p.sc.readyz(p.t); code == http.StatusOK {
			return
		}
		select {
		case <-exited:
			p.t.Fatalf("sidecar serve exited during start-up:\n%s", p.log.String())
		default:
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("sidecar serve not ready after %s:\n%s", waitLong, p.log.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// kill ends the process with SIGKILL, as the kernel's OOM killer does, and
// waits for it to exit.
func (p *serveProcess) kill() {
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.exited
	p.cmd = nil
}

// TestChaosSidecarKilledClientsResume kills the sidecar process with
// SIGKILL twice under load and starts it again on the same address. Its
// clients reconnect and resume after the last id they received.
func TestChaosSidecarKilledClientsResume(t *testing.T) {
	cluster := pgtest.NewCluster(t)
	sp := startServeProcess(t, []string{
		"DATABASE_URL=" + cluster.URL,
		"SIDECAR_JWT_SECRET=" + testSecret,
		"SIDECAR_API_KEYS=" + testAPIKey,
		fmt.Sprintf("SIDECAR_REPLAY_LIMIT=%d", chaosReplayLimit),
	}, freeAddr(t))

	const pattern = "kill.>"
	var clients []*collector
	for range 3 {
		clients = append(clients, newCollector(subscribe(t, dial(t, sp.sc), []string{pattern})))
	}
	pub := startPublisher(t, cluster.URL, "kill", 1000)

	for round := 1; round <= 2; round++ {
		for _, c := range clients {
			c.waitForMore(t, 300)
		}

		sp.kill()
		for _, c := range clients {
			c.waitEnded(t)
		}
		sp.start()

		for _, c := range clients {
			resumed := subscribe(t, dial(t, sp.sc), []string{pattern},
				client.WithSince(c.resumePoint()), client.WithEpoch(c.epoch))
			c.follow(resumed)
		}
	}
	for _, c := range clients {
		c.waitForMore(t, 300)
	}
	pub.Stop()

	table := committedEvents(t, cluster.URL, "kill.")
	for i, c := range clients {
		d := checkDelivery(t, fmt.Sprintf("client %d", i+1), c, table)
		t.Logf("client %d: %d events, %s", i+1, c.count(), d)
	}
}

// TestChaosResumeBetweenReversedCommits has two transactions commit in the
// opposite order to their publishes. A client that receives the event
// committed first, disconnects and resumes after its id must receive the
// other one exactly once, whether it commits before or after the resume.
func TestChaosResumeBetweenReversedCommits(t *testing.T) {
	cluster := pgtest.NewCluster(t)
	sc := startSidecar(t, cluster.URL)
	ctx := context.Background()

	for _, tc := range []struct {
		name         string
		topic        string
		commitBefore bool // the late commit happens before the resume
	}{
		{"late commit replayed", "rev.replayed", true},
		{"late commit live", "rev.live", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conn := dial(t, sc)
			sub := subscribe(t, conn, []string{tc.topic})

			publishedFirst, err := connect(t, cluster.URL).Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := publishedFirst.Exec(ctx, `SELECT realtime.publish($1, '"published first"')`, tc.topic); err != nil {
				t.Fatal(err)
			}
			publishedSecond, err := connect(t, cluster.URL).Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := publishedSecond.Exec(ctx, `SELECT realtime.publish($1, '"published second"')`, tc.topic); err != nil {
				t.Fatal(err)
			}
			if err := publishedSecond.Commit(ctx); err != nil {
				t.Fatal(err)
			}

			early := next(t, sub)
			if string(early.Data) != `"published second"` {
				t.Fatalf("first event = %s, want the one committed first", early.Data)
			}
			conn.Close()

			if tc.commitBefore {
				if err := publishedFirst.Commit(ctx); err != nil {
					t.Fatal(err)
				}
			}
			resumed := subscribe(t, dial(t, sc), []string{tc.topic}, client.WithSince(early.ID))
			if !tc.commitBefore {
				if err := publishedFirst.Commit(ctx); err != nil {
					t.Fatal(err)
				}
			}

			late := next(t, resumed)
			if string(late.Data) != `"published first"` || late.ID <= early.ID {
				t.Fatalf("event after resuming from id %d = %s with id %d, want \"published first\" with a larger id", early.ID, late.Data, late.ID)
			}
			expectQuiet(t, resumed, 500*time.Millisecond)

			table := committedEvents(t, cluster.URL, tc.topic)
			want := []tableEvent{
				{early.ID, tc.topic, `"published second"`},
				{late.ID, tc.topic, `"published first"`},
			}
			if fmt.Sprint(table) != fmt.Sprint(want) {
				t.Fatalf("realtime.events = %v, want %v", table, want)
			}
		})
	}
}

// TestChaosTenThousandEventsInOneTransaction publishes 10,000 events in
// one transaction: they arrive in order, with consecutive ids.
func TestChaosTenThousandEventsInOneTransaction(t *testing.T) {
	cluster := pgtest.NewCluster(t)
	sc := startSidecar(t, cluster.URL)
	sub := newCollector(subscribe(t, dial(t, sc), []string{"bulk"}))

	const n = 10_000
	start := time.Now()
	exec(t, connect(t, cluster.URL), `SELECT realtime.publish('bulk', to_jsonb(i)) FROM generate_series(1, $1::int) i`, n)
	waitFor(t, "10,000 events", func() bool { return sub.count() >= n })
	t.Logf("%d events of one transaction reached the subscriber %s after the publish began", n, time.Since(start).Round(time.Millisecond))

	got := sub.received()
	for i, ev := range got {
		if ev.ID != got[0].ID+int64(i) || string(ev.Data) != fmt.Sprint(i+1) {
			t.Fatalf("event %d = %s with id %d, want %d with id %d", i, ev.Data, ev.ID, i+1, got[0].ID+int64(i))
		}
	}

	table := committedEvents(t, cluster.URL, "bulk")
	if len(table) != n || table[n-1].ID-table[0].ID != n-1 {
		t.Fatalf("realtime.events has %d events with ids %d to %d, want %d consecutive ids", len(table), table[0].ID, table[len(table)-1].ID, n)
	}
	checkDelivery(t, "the subscriber", sub, table)
}

// dialSmallReceiveBuffer opens a raw websocket whose socket has a receive
// buffer of 8 KiB. Loopback otherwise grows it to many megabytes, which a
// client that stops reading would have to fill before the sidecar's writes
// block.
func dialSmallReceiveBuffer(t testing.TB, sc *sidecar, tok string) *rawConn {
	t.Helper()
	dialer := &net.Dialer{Control: func(network, address string, c syscall.RawConn) error {
		var sockErr error
		err := c.Control(func(fd uintptr) {
			sockErr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 8<<10)
		})
		if err != nil {
			return err
		}
		return sockErr
	}}
	httpClient := &http.Client{Transport: &http.Transport{DialContext: dialer.DialContext}}

	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	conn, _, err := websocket.Dial(ctx, sc.ws, &websocket.DialOptions{HTTPHeader: authHeader(tok), HTTPClient: httpClient})
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	conn.SetReadLimit(64 << 20)
	t.Cleanup(func() { conn.CloseNow() })
	rc := &rawConn{t: t, conn: conn}
	if msg := rc.read(); msg["method"] != "welcome" {
		t.Fatalf("first message = %v, want the welcome notification", msg)
	}
	return rc
}

// TestChaosSlowClientUnderLargeEvents streams 4 KB events to a client that
// stops reading and to two that keep up. The slow one is closed with 1013,
// the others receive everything, and Postgres' notification queue stays
// nearly empty because the LISTEN connection does not wait for any client.
func TestChaosSlowClientUnderLargeEvents(t *testing.T) {
	cluster := pgtest.NewCluster(t)
	sc := startSidecar(t, cluster.URL, func(c *server.Config) {
		c.QueueBytes = 64 << 10
		c.MaxQueueBytes = 64<<10 + c.MaxEventBytes
		c.SlowGrace = 500 * time.Millisecond
		c.WriteTimeout = 2 * time.Second
	})
	tok := token(t, "u", []string{"big"}, nil)

	slow := dialSmallReceiveBuffer(t, sc, tok)
	slow.send(websocket.MessageText, `{"jsonrpc": "2.0", "id": 1, "method": "subscribe", "params": {"topics": ["big"]}}`)
	if msg := slow.read(); msg["result"] == nil {
		t.Fatalf("subscribe = %v", msg)
	}
	healthy := []*collector{
		newCollector(subscribe(t, dialToken(t, sc, tok), []string{"big"})),
		newCollector(subscribe(t, dialToken(t, sc, tok), []string{"big"})),
	}

	// Sample the notification queue throughout the run.
	var (
		samplerWG sync.WaitGroup
		maxUsage  float64
		samples   int
	)
	samplerCtx, stopSampler := context.WithCancel(context.Background())
	defer stopSampler()
	sampler := connect(t, cluster.URL)
	samplerWG.Go(func() {
		for samplerCtx.Err() == nil {
			usage, err := queryFloat(samplerCtx, sampler, `SELECT pg_notification_queue_usage()`)
			if err == nil {
				maxUsage = max(maxUsage, usage)
				samples++
			}
			select {
			case <-samplerCtx.Done():
			case <-time.After(50 * time.Millisecond):
			}
		}
	})

	// Publish 20 events of 4 KB every 20 ms until the slow client is
	// closed, then 20 rounds more.
	sql := connect(t, cluster.URL)
	closedAt := -1
	round := 0
	for ; closedAt < 0 || round < closedAt+20; round++ {
		if round == 500 {
			t.Fatalf("the slow client was not closed after %d events", round*20)
		}
		exec(t, sql, `SELECT realtime.publish('big', to_jsonb(format('%s-%s-', $1::int, i) || repeat('x', 4000))) FROM generate_series(1, 20) i`, round)
		if closedAt < 0 && sc.srv.Hub().Stats().SlowCloses > 0 {
			closedAt = round
		}
		time.Sleep(20 * time.Millisecond)
	}

	table := committedEvents(t, cluster.URL, "big")
	for i, c := range healthy {
		d := checkDelivery(t, fmt.Sprintf("healthy client %d", i+1), c, table)
		t.Logf("healthy client %d: %d events, %s", i+1, c.count(), d)
	}
	stopSampler()
	samplerWG.Wait()

	if got := slow.closeCode(); got != websocket.StatusTryAgainLater {
		t.Errorf("slow client close code = %v, want 1013", got)
	}
	t.Logf("%d events of 4 KB; the slow client was closed after %d; pg_notification_queue_usage() peaked at %g in %d samples",
		len(table), (closedAt+1)*20, maxUsage, samples)
	if samples == 0 {
		t.Fatal("pg_notification_queue_usage() was never sampled")
	}
	if maxUsage >= 0.01 {
		t.Errorf("pg_notification_queue_usage() reached %g, want it below 0.01", maxUsage)
	}
}

// TestChaosIdenticalEventsStayDistinct publishes two identical durable
// events and two identical ephemeral ones in one transaction. Postgres
// folds identical notifications of one transaction, yet each call must
// remain one event.
func TestChaosIdenticalEventsStayDistinct(t *testing.T) {
	cluster := pgtest.NewCluster(t)
	sc := startSidecar(t, cluster.URL)
	sub := subscribe(t, dial(t, sc), []string{"twin"})

	ctx := context.Background()
	tx, err := connect(t, cluster.URL).Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, sql := range []string{
		`SELECT realtime.publish('twin', '"same"')`,
		`SELECT realtime.publish('twin', '"same"')`,
		`SELECT realtime.broadcast('twin', '"same"')`,
		`SELECT realtime.broadcast('twin', '"same"')`,
	} {
		if _, err := tx.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}

	var durable, ephemeral []client.Event
	for range 4 {
		ev := next(t, sub)
		if string(ev.Data) != `"same"` {
			t.Fatalf("event data = %s, want \"same\"", ev.Data)
		}
		if ev.ID == 0 {
			ephemeral = append(ephemeral, ev)
		} else {
			durable = append(durable, ev)
		}
	}
	expectQuiet(t, sub, 300*time.Millisecond)

	if len(durable) != 2 || durable[0].ID == durable[1].ID {
		t.Errorf("durable events = %v, want two with different ids", durable)
	}
	if len(ephemeral) != 2 {
		t.Errorf("ephemeral events = %d, want 2", len(ephemeral))
	}
	if table := committedEvents(t, cluster.URL, "twin"); len(table) != 2 {
		t.Errorf("realtime.events has %d rows for twin, want 2", len(table))
	}
}
