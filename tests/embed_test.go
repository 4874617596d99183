package tests

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/pgsidecar/sidecar/appcall"
	"github.com/pgsidecar/sidecar/auth"
	"github.com/pgsidecar/sidecar/rpc"
	"github.com/pgsidecar/sidecar/server"
	"github.com/pgsidecar/sidecar/tests/pgtest"
)

// applicationFunc is a server.Application made of one function.
type applicationFunc func(ctx context.Context, c appcall.Call) (json.RawMessage, *rpc.Error)

func (f applicationFunc) Forward(ctx context.Context, c appcall.Call) (json.RawMessage, *rpc.Error) {
	return f(ctx, c)
}

// embeddedMethods implements app.add ([a, b] gives a + b) and app.whoami (the
// caller's subject) in-process.
func embeddedMethods(_ context.Context, c appcall.Call) (json.RawMessage, *rpc.Error) {
	switch c.Method {
	case "add":
		var operands []int
		if err := json.Unmarshal(c.Params, &operands); err != nil || len(operands) != 2 {
			return nil, rpc.InvalidParams("app.add takes two integers [a, b]")
		}
		sum, _ := json.Marshal(operands[0] + operands[1])
		return sum, nil
	case "whoami":
		subject, _ := json.Marshal(c.Subject)
		return subject, nil
	default:
		return nil, rpc.MethodNotFound("app." + c.Method)
	}
}

// startEmbedded starts an Echo application with its own GET /hello and the
// sidecar mounted on the same server, the way a Go program embeds it. The
// returned sidecar's stop drains the sidecar but leaves the application
// serving. The test's cleanup closes both. Ending ctx drains the sidecar
// too.
func startEmbedded(t *testing.T, ctx context.Context, dbURL string) *sidecar {
	t.Helper()

	cfg := server.Defaults()
	cfg.DatabaseURL = dbURL
	cfg.JWTSecret = []byte(testSecret)
	cfg.DrainTimeout = 5 * time.Second
	cfg.Application = applicationFunc(embeddedMethods)
	cfg.Logger = testLogger(t)
	srv, err := server.New(cfg)
	if err != nil {
		t.Fatalf("server.New: %v", err)
	}
	stop := srv.Start(ctx)
	t.Cleanup(stop)

	e := echo.New()
	e.HideBanner = true
	e.GET("/hello", func(c echo.Context) error {
		return c.String(http.StatusOK, "hello from the application")
	})
	mounted := echo.WrapHandler(srv.Handler())
	e.Any("/v1/*", mounted)
	e.GET("/readyz", mounted)
	e.GET("/healthz", mounted)

	app := httptest.NewServer(e)
	t.Cleanup(app.Close)

	sc := &sidecar{
		srv:   srv,
		base:  app.URL,
		ws:    "ws" + strings.TrimPrefix(app.URL, "http") + "/v1/ws",
		dbURL: dbURL,
		stop:  stop,
	}
	waitFor(t, "embedded sidecar ready", func() bool {
		code, _ := sc.readyz(t)
		return code == http.StatusOK
	})
	return sc
}

func getBody(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: reading the body: %v", url, err)
	}
	return resp.StatusCode, string(body)
}

func TestEmbedInEchoApplication(t *testing.T) {
	db := pgtest.NewDatabase(t)
	ctx := context.Background()
	sc := startEmbedded(t, ctx, db)

	code, body := getBody(t, sc.base+"/hello")
	if code != http.StatusOK || body != "hello from the application" {
		t.Fatalf("GET /hello = %d %q, want 200 from the application's own route", code, body)
	}

	tok, err := auth.Sign([]byte(testSecret), "user-7", auth.Realtime{
		Subscribe: []string{"orders.>"},
		Call:      []string{"app.add", "app.whoami"},
	}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	conn := dialToken(t, sc, tok)

	t.Run("calls answered in-process", func(t *testing.T) {
		var sum int
		if err := conn.Call(ctx, "app.add", []int{2, 3}, &sum); err != nil {
			t.Fatalf("app.add(2, 3): %v", err)
		}
		if sum != 5 {
			t.Fatalf("app.add(2, 3) = %d, want 5", sum)
		}

		var subject string
		if err := conn.Call(ctx, "app.whoami", nil, &subject); err != nil {
			t.Fatalf("app.whoami: %v", err)
		}
		if subject != "user-7" {
			t.Fatalf("app.whoami = %q, want the token's subject user-7", subject)
		}

		err := conn.Call(ctx, "app.add", []string{"two", "three"}, nil)
		if got := rpcCode(err); got != rpc.CodeInvalidParams {
			t.Fatalf("app.add(\"two\", \"three\"): error %v (code %d), want the application's -32602 unchanged", err, got)
		}
	})

	t.Run("event published with SQL", func(t *testing.T) {
		sub := subscribe(t, conn, []string{"orders.>"})
		exec(t, connect(t, db), `SELECT realtime.publish('orders.42', '{"status": "paid"}')`)

		ev := next(t, sub)
		if ev.Topic != "orders.42" {
			t.Fatalf("event topic = %q, want orders.42", ev.Topic)
		}
		var data map[string]string
		if err := json.Unmarshal(ev.Data, &data); err != nil {
			t.Fatalf("event data %s: %v", ev.Data, err)
		}
		if data["status"] != "paid" {
			t.Fatalf("event data = %s, want status paid", ev.Data)
		}
		if ev.ID <= 0 {
			t.Fatalf("event id = %d, want a durable id", ev.ID)
		}
	})

	t.Run("stop drains the sidecar only", func(t *testing.T) {
		sc.stop()

		select {
		case <-conn.Done():
		case <-time.After(waitLong):
			t.Fatalf("the websocket is still open %s after stop", waitLong)
		}
		if code, _ := sc.readyz(t); code != http.StatusServiceUnavailable {
			t.Fatalf("GET /readyz after stop = %d, want 503", code)
		}
		code, body := getBody(t, sc.base+"/hello")
		if code != http.StatusOK || body != "hello from the application" {
			t.Fatalf("GET /hello after stop = %d %q, want the application still serving", code, body)
		}
	})
}

func TestEmbedDrainsWhenContextEnds(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sc := startEmbedded(t, ctx, pgtest.NewDatabase(t))
	conn := dial(t, sc)

	cancel()

	select {
	case <-conn.Done():
	case <-time.After(waitLong):
		t.Fatalf("the websocket is still open %s after the context ended", waitLong)
	}
	sc.stop()
	if code, _ := sc.readyz(t); code != http.StatusServiceUnavailable {
		t.Fatalf("GET /readyz after the context ended = %d, want 503", code)
	}
}
