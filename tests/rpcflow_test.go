package tests

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/pgsidecar/sidecar/auth"
	"github.com/pgsidecar/sidecar/server"
	"github.com/pgsidecar/sidecar/tests/pgtest"
)

// nestingApp answers add and slow like fakeApp, and answers outer by
// calling the client's method inner through the sidecar's HTTP API while
// the client's call of outer is still waiting.
type nestingApp struct {
	fakeApp
	sidecarBase string
}

func (a *nestingApp) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	var req struct {
		ID     json.RawMessage `json:"id"`
		Method string          `json:"method"`
	}
	_ = json.Unmarshal(body, &req)
	if req.Method != "outer" {
		r.Body = io.NopCloser(bytes.NewReader(body))
		a.fakeApp.ServeHTTP(w, r)
		return
	}

	call, _ := json.Marshal(map[string]any{"method": "inner", "params": []int{20, 22}})
	httpReq, _ := http.NewRequest(http.MethodPost, a.sidecarBase+"/v1/clients/"+r.Header.Get("X-Sidecar-Client-Id")+"/call", bytes.NewReader(call))
	httpReq.Header.Set("Authorization", "Bearer "+testAPIKey)
	resp, err := http.DefaultClient.Do(httpReq)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	defer resp.Body.Close()
	var out struct {
		Result json.RawMessage `json:"result"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&out)
	fmt.Fprintf(w, `{"jsonrpc": "2.0", "id": %s, "result": {"inner": %s}}`, req.ID, out.Result)
}

func TestCallsRunConcurrentlyAndNest(t *testing.T) {
	app := &nestingApp{}
	appServer := httptest.NewServer(app)
	t.Cleanup(appServer.Close)
	db := pgtest.NewDatabase(t)
	sc := startSidecar(t, db, func(c *server.Config) { c.AppRPCURL = appServer.URL })
	app.sidecarBase = sc.base

	tok, err := auth.Sign([]byte(testSecret), "nester", auth.Realtime{Call: []string{"app.>"}}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	conn := dialToken(t, sc, tok)
	ctx := context.Background()

	t.Run("1,000 concurrent calls complete", func(t *testing.T) {
		var wg sync.WaitGroup
		errs := make([]error, 1000)
		for i := range errs {
			wg.Go(func() {
				var sum int
				errs[i] = conn.Call(ctx, "app.add", []int{i, 1}, &sum)
				if errs[i] == nil && sum != i+1 {
					errs[i] = fmt.Errorf("add(%d, 1) = %d", i, sum)
				}
			})
		}
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Fatalf("call %d: %v", i, err)
			}
		}
	})

	t.Run("a quick call is not held up by a slow one", func(t *testing.T) {
		order := make(chan string, 2)
		go func() {
			_ = conn.Call(ctx, "app.slow", nil, nil) // the application takes 2 s
			order <- "slow"
		}()
		time.Sleep(100 * time.Millisecond) // the slow call goes first
		var sum int
		if err := conn.Call(ctx, "app.add", []int{1, 2}, &sum); err != nil {
			t.Fatal(err)
		}
		order <- "quick"
		if first := <-order; first != "quick" {
			t.Fatalf("%s call finished first, want the quick one", first)
		}
		<-order
	})

	t.Run("nested calls both ways return", func(t *testing.T) {
		// outer (client → application) makes the application call inner
		// (application → client), whose handler calls app.add again.
		conn.Handle("inner", func(ctx context.Context, params json.RawMessage) (any, error) {
			var ab []int
			if err := json.Unmarshal(params, &ab); err != nil {
				return nil, err
			}
			var sum int
			err := conn.Call(ctx, "app.add", ab, &sum)
			return sum, err
		})
		var out struct {
			Inner int `json:"inner"`
		}
		if err := conn.Call(ctx, "app.outer", nil, &out); err != nil || out.Inner != 42 {
			t.Fatalf("app.outer = %+v, %v; want inner 42", out, err)
		}
	})
}
