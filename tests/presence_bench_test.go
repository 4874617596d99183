package tests

import (
	"context"
	"fmt"
	"sort"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/pgsidecar/sidecar/auth"
	"github.com/pgsidecar/sidecar/client"
	"github.com/pgsidecar/sidecar/tests/pgtest"
)

// BenchmarkPresence10k joins 10,000 websocket clients to one topic, half
// on each of two sidecars, then measures the latency of presence.list and
// presence.stats and the rows Postgres writes per second while they stay
// present. Run it once:
//
//	go test -run '^$' -bench Presence10k -benchtime 1x -timeout 10m ./tests/
func BenchmarkPresence10k(b *testing.B) {
	const (
		members = 10_000
		room    = "bench.room"
		queries = 100
		idle    = 20 * time.Second
	)
	// 10,000 client connections need as many descriptors in this process,
	// and the two sidecars run as processes of their own.
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		b.Fatal(err)
	}
	lim.Cur = lim.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil || lim.Cur < members+512 {
		b.Skipf("needs %d open files, the limit is %d (%v)", members+512, lim.Cur, err)
	}

	db := pgtest.NewDatabase(b)
	var urls []string
	for range 2 {
		addr := freeAddr(b)
		cmd := command(b, []string{
			"DATABASE_URL=" + db, "SIDECAR_ADDR=" + addr, "SIDECAR_JWT_SECRET=" + testSecret, "SIDECAR_API_KEYS=" + testAPIKey,
			"SIDECAR_LOG_LEVEL=warn", "SIDECAR_MAX_CONNECTIONS_PER_SUBJECT=" + fmt.Sprint(members),
		}, "serve")
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		waitFor(b, "a sidecar to be ready", func() bool { return statusOf("http://"+addr+"/readyz") == 200 })
		urls = append(urls, "ws://"+addr+"/v1/ws")
	}
	tok := presenceTokenFor(b, "bench", []string{"bench.>"})

	conns := make([]*client.Conn, members)
	b.Cleanup(func() {
		for _, c := range conns {
			if c != nil {
				_ = c.CloseNow()
			}
		}
	})
	start := time.Now()
	g, ctx := errgroup.WithContext(context.Background())
	g.SetLimit(100)
	for i := range conns {
		g.Go(func() error {
			c, err := client.Dial(ctx, urls[i%2], client.Options{Token: tok})
			if err != nil {
				return err
			}
			conns[i] = c
			return c.JoinPresence(ctx, room, map[string]int{"seat": i})
		})
	}
	if err := g.Wait(); err != nil {
		b.Fatal(err)
	}
	joinSeconds := time.Since(start).Seconds()

	pg := connect(b, db)
	writes := func() int64 {
		var n int64
		err := pg.QueryRow(context.Background(), `
			SELECT coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0)::bigint
			  FROM pg_stat_user_tables WHERE schemaname = 'realtime'`).Scan(&n)
		if err != nil {
			b.Fatal(err)
		}
		return n
	}
	// Let the sidecars' sessions report the statistics of the joins
	// first: Postgres 15 flushes an idle backend's statistics at most every
	// 10 s.
	time.Sleep(12 * time.Second)
	perTable := func() map[string]int64 {
		rows, err := pg.Query(context.Background(), `SELECT relname, n_tup_ins + n_tup_upd + n_tup_del FROM pg_stat_user_tables WHERE schemaname = 'realtime'`)
		if err != nil {
			b.Fatal(err)
		}
		defer rows.Close()
		out := map[string]int64{}
		for rows.Next() {
			var name string
			var n int64
			_ = rows.Scan(&name, &n)
			out[name] = n
		}
		return out
	}
	tablesBefore := perTable()
	before := writes()
	time.Sleep(idle)
	// The statistics collector reports with a delay of up to a second.
	time.Sleep(time.Second)
	idleWrites := float64(writes()-before) / idle.Seconds()
	for name, n := range perTable() {
		if d := n - tablesBefore[name]; d > 0 {
			b.Logf("rows written to realtime.%s while idle: %d", name, d)
		}
	}

	asker := conns[0]
	ctx2, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	list := make([]time.Duration, 0, queries)
	stats := make([]time.Duration, 0, queries)
	b.ResetTimer()
	for range queries {
		t0 := time.Now()
		m, err := asker.Presence(ctx2, room)
		if err != nil || len(m) != members {
			b.Fatalf("Presence = %d members, %v, want %d", len(m), err, members)
		}
		list = append(list, time.Since(t0))

		t0 = time.Now()
		st, err := asker.PresenceStats(ctx2, room)
		if err != nil || st.Clients != members {
			b.Fatalf("PresenceStats = %+v, %v, want %d clients", st, err, members)
		}
		stats = append(stats, time.Since(t0))
	}
	b.StopTimer()

	pct := func(d []time.Duration, p float64) float64 {
		sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
		return float64(d[int(p*float64(len(d)-1))].Microseconds()) / 1000
	}
	b.ReportMetric(joinSeconds, "join-10k-s")
	b.ReportMetric(idleWrites, "idle-rows-written/s")
	b.ReportMetric(pct(list, 0.5), "list-p50-ms")
	b.ReportMetric(pct(list, 0.99), "list-p99-ms")
	b.ReportMetric(pct(stats, 0.5), "stats-p50-ms")
	b.ReportMetric(pct(stats, 0.99), "stats-p99-ms")
	fmt.Printf("joined %d in %.1f s; %.2f rows written per second while idle\n", members, joinSeconds, idleWrites)
}

func presenceTokenFor(tb testing.TB, sub string, presence []string) string {
	tb.Helper()
	tok, err := auth.Sign([]byte(testSecret), sub, auth.Realtime{Presence: presence}, time.Hour)
	if err != nil {
		tb.Fatal(err)
	}
	return tok
}
