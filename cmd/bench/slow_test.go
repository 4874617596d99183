package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/google/go-cmp/cmp"
)

// testTimeout bounds every wait in these tests. It is generous because it
// only matters when a test fails.
const testTimeout = 10 * time.Second

// serveFakeSidecar starts a websocket server that plays the sidecar for
// one subscriber per connection: it sends the welcome, responds to
// the subscribe request, sends events events, and then calls end. It returns
// the target that names the server.
func serveFakeSidecar(t *testing.T, events int, end func(ws *websocket.Conn, testDone <-chan struct{})) *target {
	t.Helper()
	testDone := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ws, err := websocket.Accept(w, r, nil)
		if err != nil {
			t.Errorf("accept: %v", err)
			return
		}
		defer ws.CloseNow()

		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		defer cancel()
		if err := playSubscription(ctx, ws, events); err != nil {
			t.Errorf("fake sidecar: %v", err)
			return
		}
		end(ws, testDone)
	}))
	t.Cleanup(func() {
		close(testDone)
		srv.Close()
	})

	return &target{
		WSURL:     "ws" + strings.TrimPrefix(srv.URL, "http") + "/v1/ws",
		JWTSecret: []byte("test-secret"),
	}
}

// playSubscription sends the welcome, responds to one subscribe request
// and sends events events for it.
func playSubscription(ctx context.Context, ws *websocket.Conn, events int) error {
	send := func(msg string) error {
		return ws.Write(ctx, websocket.MessageText, []byte(msg))
	}

	welcome := `{"jsonrpc":"2.0","method":"welcome","params":{"client_id":"c-1","epoch":"ep-1","version":"test","heartbeat_s":25}}`
	if err := send(welcome); err != nil {
		return fmt.Errorf("send welcome: %w", err)
	}

	_, msg, err := ws.Read(ctx)
	if err != nil {
		return fmt.Errorf("read subscribe request: %w", err)
	}
	var req struct {
		ID     json.RawMessage `json:"id"`
		Method string          `json:"method"`
	}
	if err := json.Unmarshal(msg, &req); err != nil || req.Method != "subscribe" {
		return fmt.Errorf("got %s, want a subscribe request (decode error %v)", msg, err)
	}
	result := `{"jsonrpc":"2.0","id":%s,"result":{"subscription":"s-1","topics":["bench.test"],"epoch":"ep-1","head":0}}`
	if err := send(fmt.Sprintf(result, req.ID)); err != nil {
		return fmt.Errorf("send subscribe result: %w", err)
	}

	event := `{"jsonrpc":"2.0","method":"event","params":{"subscription":"s-1","topic":"bench.test","id":%d,"ts":"2026-01-02T03:04:05.000006Z","data":{"seq":%d}}}`
	for i := 1; i <= events; i++ {
		if err := send(fmt.Sprintf(event, i, i)); err != nil {
			return fmt.Errorf("send event %d: %w", i, err)
		}
	}
	return nil
}

func TestAwaitSlowEnds(t *testing.T) {
	tests := []struct {
		name    string
		end     func(ws *websocket.Conn, testDone <-chan struct{})
		timeout time.Duration
		want    map[string]int
	}{
		{
			name: "closed as too slow",
			end: func(ws *websocket.Conn, _ <-chan struct{}) {
				_ = ws.Close(websocket.StatusTryAgainLater, "too slow")
			},
			timeout: testTimeout,
			want:    map[string]int{"1013": 2},
		},
		{
			name:    "dropped without close frame",
			end:     func(ws *websocket.Conn, _ <-chan struct{}) { _ = ws.CloseNow() },
			timeout: testTimeout,
			want:    map[string]int{slowEndNoCode: 2},
		},
		{
			name:    "still open",
			end:     func(_ *websocket.Conn, testDone <-chan struct{}) { <-testDone },
			timeout: 300 * time.Millisecond,
			want:    map[string]int{slowEndOpen: 2},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// More events than the subscriber's buffer, so that its
			// reader has stopped when awaitSlowEnds starts.
			tgt := serveFakeSidecar(t, 20, tt.end)
			ctx, cancel := context.WithTimeout(t.Context(), testTimeout)
			defer cancel()

			slow, err := dialSlowSubscribers(ctx, tgt, 2, "bench.test")
			if err != nil {
				t.Fatalf("dialSlowSubscribers: %v", err)
			}
			defer closeReceivers(slow)

			got := awaitSlowEnds(ctx, slow, tt.timeout)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("awaitSlowEnds() mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestSlowDialerReceiveBuffer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()

	conn, err := slowDialer().Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer conn.Close()

	raw, err := conn.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var got int
	var sockErr error
	if err := raw.Control(func(fd uintptr) {
		got, sockErr = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF)
	}); err != nil || sockErr != nil {
		t.Fatalf("read SO_RCVBUF: %v, %v", err, sockErr)
	}

	// Linux doubles the value set, for its bookkeeping overhead.
	if want := 2 * slowReceiveBuffer; got != want {
		t.Errorf("SO_RCVBUF = %d, want %d", got, want)
	}
}

func TestFormatSlowEnds(t *testing.T) {
	tests := []struct {
		counts map[string]int
		want   string
	}{
		{nil, "-"},
		{map[string]int{"1013": 10}, "1013×10"},
		{map[string]int{slowEndOpen: 1, "1013": 9}, "1013×9 open×1"},
		{map[string]int{slowEndNoCode: 2, "1012": 1}, "1012×1 no-code×2"},
	}
	for _, tt := range tests {
		if got := formatSlowEnds(tt.counts); got != tt.want {
			t.Errorf("formatSlowEnds(%v) = %q, want %q", tt.counts, got, tt.want)
		}
	}
}
