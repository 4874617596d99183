package tests

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sort"
	"testing"
	"time"

	"github.com/pgsidecar/sidecar/auth"
	"github.com/pgsidecar/sidecar/server"
	"github.com/pgsidecar/sidecar/tests/pgtest"
)

// BenchmarkAppCallRoundTrip measures a client's app.add call through the
// sidecar against the same JSON-RPC call posted to the application
// directly, side by side. It reports p50 and p99 of each as custom metrics.
//
//	go test -run '^$' -bench AppCallRoundTrip -benchtime 2000x ./tests/
func BenchmarkAppCallRoundTrip(b *testing.B) {
	appServer := httptest.NewServer(&fakeApp{})
	b.Cleanup(appServer.Close)
	db := pgtest.NewDatabase(b)
	sc := startSidecar(b, db, func(c *server.Config) {
		c.AppRPCURL = appServer.URL
		// The loop calls as fast as it can, far above a browser's rate.
		c.MessageRate = 1e6
		c.MessageBurst = 1e6
	})
	tok, err := auth.Sign([]byte(testSecret), "bench", auth.Realtime{Call: []string{"app.add"}}, time.Hour)
	if err != nil {
		b.Fatal(err)
	}
	conn := dialToken(b, sc, tok)
	ctx := context.Background()
	httpClient := &http.Client{}
	body := []byte(`{"jsonrpc": "2.0", "id": 1, "method": "add", "params": [2, 3]}`)

	var viaSidecar, direct []time.Duration
	b.ResetTimer()
	for range b.N {
		start := time.Now()
		var sum int
		if err := conn.Call(ctx, "app.add", []int{2, 3}, &sum); err != nil || sum != 5 {
			b.Fatalf("app.add = %d, %v", sum, err)
		}
		viaSidecar = append(viaSidecar, time.Since(start))

		start = time.Now()
		resp, err := httpClient.Post(appServer.URL, "application/json", bytes.NewReader(body))
		if err != nil {
			b.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body) // drained, so the connection is reused
		resp.Body.Close()
		direct = append(direct, time.Since(start))
	}
	b.StopTimer()

	for name, d := range map[string][]time.Duration{"sidecar": viaSidecar, "direct": direct} {
		sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
		b.ReportMetric(float64(d[len(d)/2].Microseconds()), fmt.Sprintf("%s-p50-µs", name))
		b.ReportMetric(float64(d[len(d)*99/100].Microseconds()), fmt.Sprintf("%s-p99-µs", name))
	}
}
