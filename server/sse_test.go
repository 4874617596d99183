package server

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/pgsidecar/sidecar/hub"
	"github.com/pgsidecar/sidecar/rpc"
	"github.com/pgsidecar/sidecar/topic"
)

func TestParseSSEEventID(t *testing.T) {
	cases := []struct {
		value     string
		wantEpoch string
		wantID    int64
		wantErr   bool
	}{
		{"3f2a9c0d1e4b5a67:42", "3f2a9c0d1e4b5a67", 42, false},
		{"e:0", "e", 0, false},
		{"a:b:7", "a:b", 7, false},
		{":7", "", 7, false},
		{"42", "", 0, true},
		{"e:", "", 0, true},
		{"e:-1", "", 0, true},
		{"e:x", "", 0, true},
		{"e:99999999999999999999", "", 0, true},
	}
	for _, tc := range cases {
		epoch, id, err := parseSSEEventID(tc.value)
		if tc.wantErr {
			if err == nil {
				t.Errorf("parseSSEEventID(%q) = %q, %d, want an error", tc.value, epoch, id)
			}
			continue
		}
		if err != nil || epoch != tc.wantEpoch || id != tc.wantID {
			t.Errorf("parseSSEEventID(%q) = %q, %d, %v, want %q, %d", tc.value, epoch, id, err, tc.wantEpoch, tc.wantID)
		}
	}
}

func TestSSEEventIDRoundTrip(t *testing.T) {
	epoch, id, err := parseSSEEventID(sseEventID("0123456789abcdef", 9001))
	if err != nil || epoch != "0123456789abcdef" || id != 9001 {
		t.Fatalf("parseSSEEventID(sseEventID(...)) = %q, %d, %v, want 0123456789abcdef, 9001", epoch, id, err)
	}
}

// blockWriter is an http.ResponseWriter that passes each Write to a
// channel, so a test can read what a sink wrote while it still writes.
type blockWriter struct {
	header http.Header
	writes chan string
}

func newBlockWriter() *blockWriter {
	return &blockWriter{header: http.Header{}, writes: make(chan string, 64)}
}

func (w *blockWriter) Header() http.Header { return w.header }
func (w *blockWriter) WriteHeader(int)     {}
func (w *blockWriter) Flush()              {}

func (w *blockWriter) Write(p []byte) (int, error) {
	w.writes <- string(p)
	return len(p), nil
}

func (w *blockWriter) next(t *testing.T) string {
	t.Helper()
	select {
	case s := <-w.writes:
		return s
	case <-time.After(10 * time.Second):
		t.Fatal("nothing written within 10s")
	}
	return ""
}

func TestSSESinkWritesHubEvents(t *testing.T) {
	h := hub.New(hub.Config{})
	w := newBlockWriter()
	sink := newSSESink(w)
	sink.epoch = "e1"
	client := h.Register(sink)
	sub, _ := client.Subscribe([]topic.Pattern{topic.MustParse("orders.>")}, 0)
	sub.Start(nil)

	h.Publish(hub.Event{Topic: "orders.1", Data: json.RawMessage(`{"note": "<b>&</b>"}`), ID: 7, TS: "2026-12-04T10:00:00.000000Z"})
	h.Publish(hub.Event{Topic: "orders.2", Data: json.RawMessage("[1,\n2]"), TS: "2026-12-04T10:00:01.000000Z"})
	h.Publish(hub.Event{Topic: "orders.3", TS: "2026-12-04T10:00:02.000000Z"})

	want := []string{
		"id: e1:7\ndata: {\"topic\":\"orders.1\",\"data\":{\"note\":\"<b>&</b>\"},\"id\":7,\"ts\":\"2026-12-04T10:00:00.000000Z\"}\n\n",
		"data: {\"topic\":\"orders.2\",\"data\":[1,2],\"ts\":\"2026-12-04T10:00:01.000000Z\"}\n\n",
		"data: {\"topic\":\"orders.3\",\"data\":null,\"ts\":\"2026-12-04T10:00:02.000000Z\"}\n\n",
	}
	for i, wantBlock := range want {
		if got := w.next(t); got != wantBlock {
			t.Errorf("block %d = %q, want %q", i, got, wantBlock)
		}
	}

	client.Close(int(closeDraining), "sidecar restarting: reconnect")
	<-client.Done()
	wantEnd := "event: error\ndata: {\"code\":1012,\"message\":\"sidecar restarting: reconnect\"}\n\n"
	if got := w.next(t); got != wantEnd {
		t.Errorf("final block = %q, want %q", got, wantEnd)
	}
}

func TestSSESinkWrite(t *testing.T) {
	ctx := context.Background()
	w := newBlockWriter()
	sink := newSSESink(w)

	if err := sink.Write(ctx, []byte(`{"jsonrpc":"2.0","method":"heartbeat","params":{}}`)); err != nil {
		t.Fatalf("Write(heartbeat) = %v, want nil", err)
	}
	if err := sink.Write(ctx, keepAliveBlock); err != nil {
		t.Fatalf("Write(keep-alive) = %v, want nil", err)
	}
	// The heartbeat notification writes nothing, so the keep-alive comes
	// first.
	if got := w.next(t); got != string(keepAliveBlock) {
		t.Errorf("first write = %q, want the keep-alive comment %q", got, keepAliveBlock)
	}

	if err := sink.Write(ctx, []byte(`{"jsonrpc":"2.0","method":"event"`)); err == nil {
		t.Error("Write(truncated notification) = nil, want an error")
	}
}

func TestSSESinkClose(t *testing.T) {
	t.Run("final error replaces the reason", func(t *testing.T) {
		w := newBlockWriter()
		sink := newSSESink(w)
		sink.endWith(&rpc.Error{Code: rpc.CodeHistoryExpired, Message: "history expired: since 9 is above the newest event id 3"})

		if err := sink.Close(rpc.CodeHistoryExpired, ""); err != nil {
			t.Fatalf("Close = %v, want nil", err)
		}
		want := "event: error\ndata: {\"code\":-32006,\"message\":\"history expired: since 9 is above the newest event id 3\"}\n\n"
		if got := w.next(t); got != want {
			t.Errorf("Close wrote %q, want %q", got, want)
		}
		if err := sink.Write(context.Background(), keepAliveBlock); !errors.Is(err, errStreamClosed) {
			t.Errorf("Write after Close = %v, want errStreamClosed", err)
		}
		if got := sink.closedWith(); got != rpc.CodeHistoryExpired {
			t.Errorf("closedWith() = %d, want %d", got, rpc.CodeHistoryExpired)
		}
	})

	t.Run("disconnected client gets nothing", func(t *testing.T) {
		w := newBlockWriter()
		sink := newSSESink(w)
		sink.disconnected.Store(true)

		if err := sink.Close(closeGoingAway, "client disconnected"); err != nil {
			t.Fatalf("Close = %v, want nil", err)
		}
		select {
		case got := <-w.writes:
			t.Errorf("Close wrote %q to a disconnected client, want nothing", got)
		default:
		}
	})
}
