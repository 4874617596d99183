package tests

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/pgsidecar/sidecar/client"
	"github.com/pgsidecar/sidecar/tests/pgtest"
)

// exposeTestMethods registers the methods the application calls in these
// tests on a client connection.
func exposeTestMethods(c *client.Conn) {
	c.Handle("echo", func(_ context.Context, params json.RawMessage) (any, error) {
		return params, nil
	})
	c.Handle("big", func(context.Context, json.RawMessage) (any, error) {
		return strings.Repeat("b", 100<<10), nil
	})
	c.Handle("refuse", func(context.Context, json.RawMessage) (any, error) {
		return nil, &client.RPCError{Code: 4003, Message: "not today"}
	})
	c.Handle("stall", func(ctx context.Context, _ json.RawMessage) (any, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	})
}

func TestApplicationCallsClient(t *testing.T) {
	db := pgtest.NewDatabase(t)
	sc := startSidecar(t, db)
	conn := dialToken(t, sc, token(t, "alice", []string{"a"}, nil))
	exposeTestMethods(conn)
	path := "/v1/clients/" + conn.Welcome().ClientID + "/call"

	code, body := postJSON(t, sc, path, testAPIKey, map[string]any{"method": "echo", "params": map[string]int{"x": 1}})
	if res, _ := body["result"].(map[string]any); code != http.StatusOK || res["x"] != float64(1) {
		t.Fatalf("echo = %d %v, want 200 with the params back", code, body)
	}

	code, body = postJSON(t, sc, path, testAPIKey, map[string]any{"method": "big"})
	if res, _ := body["result"].(string); code != http.StatusOK || len(res) != 100<<10 {
		t.Fatalf("big = %d with %d bytes, want 200 with 100 KB", code, len(res))
	}

	code, body = postJSON(t, sc, path, testAPIKey, map[string]any{"method": "refuse"})
	e, _ := body["error"].(map[string]any)
	r, _ := e["rpc"].(map[string]any)
	if code != http.StatusBadGateway || e["code"] != "client_error" || r["code"] != float64(4003) || r["message"] != "not today" {
		t.Fatalf("refuse = %d %v, want 502 client_error carrying the client's error", code, body)
	}

	code, body = postJSON(t, sc, path, testAPIKey, map[string]any{"method": "stall", "timeout_ms": 300})
	if code != http.StatusGatewayTimeout {
		t.Fatalf("stall = %d %v, want 504", code, body)
	}

	code, _ = postJSON(t, sc, path, testAPIKey, map[string]any{"method": "echo", "timeout_ms": 60001})
	if code != http.StatusBadRequest {
		t.Fatalf("timeout_ms over the maximum = %d, want 400", code)
	}

	code, _ = postJSON(t, sc, "/v1/clients/no-such-client/call", testAPIKey, map[string]any{"method": "echo"})
	if code != http.StatusNotFound {
		t.Fatalf("unknown client = %d, want 404", code)
	}

	t.Run("every connection of a subject", func(t *testing.T) {
		second := dialToken(t, sc, token(t, "alice", []string{"a"}, nil))
		exposeTestMethods(second)
		code, body := postJSON(t, sc, "/v1/subjects/call", testAPIKey, map[string]any{"subject": "alice", "method": "echo", "params": []int{7}})
		results, _ := body["results"].([]any)
		if code != http.StatusOK || len(results) != 2 {
			t.Fatalf("subject call = %d %v, want 200 with two results", code, body)
		}
		seen := map[string]bool{}
		for _, r := range results {
			m := r.(map[string]any)
			seen[m["client_id"].(string)] = true
			if res, _ := m["result"].([]any); len(res) != 1 || res[0] != float64(7) {
				t.Fatalf("subject call result = %v, want [7]", m)
			}
		}
		if !seen[conn.Welcome().ClientID] || !seen[second.Welcome().ClientID] {
			t.Fatalf("subject call answered by %v, want both connections", seen)
		}

		code, body = postJSON(t, sc, "/v1/subjects/call", testAPIKey, map[string]any{"subject": "nobody", "method": "echo"})
		if results, _ := body["results"].([]any); code != http.StatusOK || len(results) != 0 {
			t.Fatalf("subject without connections = %d %v, want 200 with no results", code, body)
		}
	})

	t.Run("pending call fails when the client leaves", func(t *testing.T) {
		leaving := dialToken(t, sc, token(t, "bob", []string{"a"}, nil))
		exposeTestMethods(leaving)
		done := make(chan int, 1)
		go func() {
			code, _ := postJSON(t, sc, "/v1/clients/"+leaving.Welcome().ClientID+"/call", testAPIKey, map[string]any{"method": "stall", "timeout_ms": 30000})
			done <- code
		}()
		time.Sleep(200 * time.Millisecond)
		leaving.CloseNow()
		select {
		case code := <-done:
			if code != http.StatusNotFound {
				t.Fatalf("call to a client that left = %d, want 404", code)
			}
		case <-time.After(waitLong):
			t.Fatal("the pending call did not fail when the client left")
		}
	})
}

func TestApplicationCallsClientOnAnotherInstance(t *testing.T) {
	db := pgtest.NewDatabase(t)
	a := startSidecar(t, db)
	b := startSidecar(t, db)

	onB := dialToken(t, b, token(t, "carol", []string{"a"}, nil))
	exposeTestMethods(onB)
	onA := dialToken(t, a, token(t, "carol", []string{"a"}, nil))
	exposeTestMethods(onA)
	path := "/v1/clients/" + onB.Welcome().ClientID + "/call"

	code, body := postJSON(t, a, path, testAPIKey, map[string]any{"method": "echo", "params": []string{"via", "postgres"}})
	if res, _ := body["result"].([]any); code != http.StatusOK || len(res) != 2 || res[1] != "postgres" {
		t.Fatalf("echo through instance A to a client on B = %d %v, want 200 with the params", code, body)
	}

	code, body = postJSON(t, a, path, testAPIKey, map[string]any{"method": "big"})
	if res, _ := body["result"].(string); code != http.StatusOK || len(res) != 100<<10 {
		t.Fatalf("100 KB result from another instance = %d with %d bytes, want 200 with 100 KB", code, len(res))
	}

	code, body = postJSON(t, a, path, testAPIKey, map[string]any{"method": "refuse"})
	if e, _ := body["error"].(map[string]any); code != http.StatusBadGateway || e["code"] != "client_error" {
		t.Fatalf("client error from another instance = %d %v, want 502 client_error", code, body)
	}

	bID := onB.Welcome().ClientID
	code, _ = postJSON(t, a, "/v1/clients/"+bID[:11]+"unknownclientxxxxxxxxxx/call", testAPIKey, map[string]any{"method": "echo"})
	if code != http.StatusNotFound {
		t.Fatalf("unknown client on another instance = %d, want 404", code)
	}

	waitFor(t, "both instances to be recorded", func() bool {
		var n int
		_ = connect(t, db).QueryRow(context.Background(), `SELECT count(*) FROM realtime.instances`).Scan(&n)
		return n == 2
	})
	code, body = postJSON(t, a, "/v1/subjects/call", testAPIKey, map[string]any{"subject": "carol", "method": "echo", "params": []int{1}})
	results, _ := body["results"].([]any)
	if code != http.StatusOK || len(results) != 2 {
		t.Fatalf("subject with one connection on each instance = %d %v, want two results", code, body)
	}
}
