package tests

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/pgsidecar/sidecar/auth"
	"github.com/pgsidecar/sidecar/server"
	"github.com/pgsidecar/sidecar/tests/pgtest"
)

// The metrics move as events flow: events in by source, events out,
// delivery latency, publishes by transport, application calls, and the
// gauges of clients, subscriptions, the listener and the pool.
func TestMetricsMoveWithTraffic(t *testing.T) {
	app := httptest.NewServer(&fakeApp{})
	t.Cleanup(app.Close)
	db := pgtest.NewDatabase(t)
	sc := startSidecar(t, db, func(c *server.Config) { c.AppRPCURL = app.URL })

	pg := connect(t, db)
	exec(t, pg, `CREATE TABLE metric_rows (id int PRIMARY KEY, v text)`)
	exec(t, pg, `CREATE TRIGGER metric_rows_rt AFTER INSERT ON metric_rows
		FOR EACH ROW EXECUTE FUNCTION realtime.notify_changes()`)

	tok, err := auth.Sign([]byte(testSecret), "watcher", auth.Realtime{
		Subscribe: []string{"m.>", "db.>"}, Call: []string{"app.add"},
	}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	c := dialToken(t, sc, tok)
	sub := subscribe(t, c, []string{"m.>", "db.public.metric_rows"})

	before := scrape(t, sc.base+"/metrics", "")

	exec(t, pg, `SELECT realtime.publish('m.sql', '{"n": 1}')`)
	exec(t, pg, `SELECT realtime.broadcast('m.wave', '{"n": 2}')`)
	exec(t, pg, `INSERT INTO metric_rows VALUES (1, 'x')`)
	if code, body := postJSON(t, sc, "/v1/publish", testAPIKey, map[string]any{"topic": "m.http", "data": 3}); code != http.StatusOK {
		t.Fatalf("POST /v1/publish = %d %v, want 200", code, body)
	}
	for range 4 {
		next(t, sub)
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	var sum int
	if err := c.Call(ctx, "app.add", []int{2, 3}, &sum); err != nil || sum != 5 {
		t.Fatalf("app.add = %d, %v, want 5", sum, err)
	}

	after := scrape(t, sc.base+"/metrics", "")
	grew := func(series string, by float64) {
		t.Helper()
		if got := after[series] - before[series]; got < by {
			t.Errorf("%s grew by %g, want at least %g (before %g, after %g)", series, got, by, before[series], after[series])
		}
	}
	grew(`sidecar_events_in_total{source="publish"}`, 2)
	grew(`sidecar_events_in_total{source="broadcast"}`, 1)
	grew(`sidecar_events_in_total{source="trigger"}`, 1)
	grew(`sidecar_events_out_total`, 4)
	grew(`sidecar_delivery_latency_seconds_count`, 4)
	grew(`sidecar_publishes_total{outcome="ok",transport="http"}`, 1)
	grew(`sidecar_rpc_duration_seconds_count{direction="client_to_app",outcome="ok"}`, 1)

	atLeast := func(series string, want float64) {
		t.Helper()
		if got := after[series]; got < want {
			t.Errorf("%s = %g, want at least %g", series, got, want)
		}
	}
	atLeast(`sidecar_clients`, 1)
	atLeast(`sidecar_subscriptions`, 1)
	atLeast(`sidecar_listener_connected`, 1)
	atLeast(`sidecar_ready`, 1)
	atLeast(`sidecar_pool_connections`, 1)
	atLeast(`go_goroutines`, 1)

	for series := range after {
		if strings.Contains(series, "watcher") || strings.Contains(series, "m.sql") || strings.Contains(series, "metric_rows") {
			t.Errorf("series %s carries a subject or topic as a label value", series)
		}
	}
}

// With --metrics-addr the metrics move to their own listener, and with
// --metrics-token a scrape must present it.
func TestMetricsOwnAddressAndToken(t *testing.T) {
	db := pgtest.NewDatabase(t)
	addr := freeAddr(t)
	sc := startSidecar(t, db, func(c *server.Config) {
		c.MetricsAddr = addr
		c.MetricsToken = "scrape-secret-1234"
	})

	resp, err := http.Get(sc.base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("GET /metrics on the main address = %d, want 404 once --metrics-addr is set", resp.StatusCode)
	}

	resp, err = http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("GET /metrics without the token = %d, want 401", resp.StatusCode)
	}
	if strings.Contains(string(body), "scrape-secret") {
		t.Errorf("the 401 body contains the token: %s", body)
	}

	got := scrape(t, "http://"+addr+"/metrics", "scrape-secret-1234")
	if _, ok := got["sidecar_clients"]; !ok {
		t.Errorf("scrape with the token has no sidecar_clients; series: %d", len(got))
	}
}

// scrape fetches url and returns every sample by its series name with
// sorted labels, as name{a="x",b="y"}. Histograms contribute _count and
// _sum.
func scrape(t *testing.T, url, token string) map[string]float64 {
	t.Helper()

	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s = %d, want 200", url, resp.StatusCode)
	}

	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse %s: %v", url, err)
	}

	out := map[string]float64{}
	for name, family := range families {
		for _, m := range family.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, l.GetName()+`="`+l.GetValue()+`"`)
			}
			sort.Strings(labels)
			key := func(suffix string) string {
				if len(labels) == 0 {
					return name + suffix
				}
				return name + suffix + "{" + strings.Join(labels, ",") + "}"
			}
			switch {
			case m.GetCounter() != nil:
				out[key("")] = m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				out[key("")] = m.GetGauge().GetValue()
			case m.GetHistogram() != nil:
				out[key("_count")] = float64(m.GetHistogram().GetSampleCount())
				out[key("_sum")] = m.GetHistogram().GetSampleSum()
			case m.GetUntyped() != nil:
				out[key("")] = m.GetUntyped().GetValue()
			}
		}
	}
	return out
}
