package hub

import (
	"encoding/json"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestEncodeEvent(t *testing.T) {
	tests := []struct {
		name string
		ev   Event
		want map[string]any
	}{
		{
			name: "durable",
			ev:   Event{Topic: "orders.42", Data: json.RawMessage(`{"total":12}`), ID: 9, TS: testTS},
			want: map[string]any{"topic": "orders.42", "data": map[string]any{"total": 12.0}, "id": 9.0, "ts": testTS, "subscription": "s12"},
		},
		{
			name: "ephemeral has no id",
			ev:   Event{Topic: "chat.room1", Data: json.RawMessage(`[1,"a"]`), TS: testTS},
			want: map[string]any{"topic": "chat.room1", "data": []any{1.0, "a"}, "ts": testTS, "subscription": "s12"},
		},
		{
			name: "empty data is null",
			ev:   Event{Topic: "chat.room1", TS: testTS},
			want: map[string]any{"topic": "chat.room1", "data": nil, "ts": testTS, "subscription": "s12"},
		},
		{
			name: "topic and ts are escaped",
			ev:   Event{Topic: "a\"b\\c\n\x01é\xff", Data: json.RawMessage(`1`), TS: "\t"},
			want: map[string]any{"topic": "a\"b\\c\n\x01é\ufffd", "data": 1.0, "ts": "\t", "subscription": "s12"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			it := item{msg: encodePrefix(tt.ev), sub: "s12"}
			msg := it.appendTo(nil)
			if len(msg) != it.size() {
				t.Errorf("len(message) = %d, item.size() = %d, want equal", len(msg), it.size())
			}

			var got struct {
				JSONRPC string         `json:"jsonrpc"`
				Method  string         `json:"method"`
				Params  map[string]any `json:"params"`
			}
			if err := json.Unmarshal(msg, &got); err != nil {
				t.Fatalf("message is not JSON: %v: %s", err, msg)
			}
			if got.JSONRPC != "2.0" || got.Method != "event" {
				t.Errorf("jsonrpc, method = %q, %q, want \"2.0\", \"event\"", got.JSONRPC, got.Method)
			}
			if diff := cmp.Diff(got.Params, tt.want); diff != "" {
				t.Errorf("params (-got +want):\n%s", diff)
			}
		})
	}
}

func TestItemWithoutSubscription(t *testing.T) {
	it := item{msg: []byte(`{"jsonrpc":"2.0","id":1,"result":"pong"}`)}
	if got := string(it.appendTo(nil)); got != string(it.msg) {
		t.Errorf("appendTo = %s, want the message unchanged", got)
	}
	if got := it.size(); got != len(it.msg) {
		t.Errorf("size() = %d, want %d", got, len(it.msg))
	}
}

func TestRingOrder(t *testing.T) {
	var r ring
	var want, got []string
	push := func(n int) {
		for range n {
			s := string(rune('a' + len(want)%26))
			want = append(want, s)
			r.push(item{sub: s})
		}
	}
	pop := func(n int) {
		for range n {
			it, ok := r.pop()
			if !ok {
				t.Fatalf("pop on a ring of %d items = false", r.len())
			}
			got = append(got, it.sub)
		}
	}

	// Wrap around the buffer, grow while wrapped, and drain.
	push(10)
	pop(6)
	push(20)
	pop(4)
	push(3000)
	pop(r.len())

	if diff := cmp.Diff(got, want); diff != "" {
		t.Errorf("popped items (-got +want):\n%s", diff)
	}
	if _, ok := r.pop(); ok {
		t.Error("pop on an empty ring = true, want false")
	}
	if r.buf != nil {
		t.Errorf("emptied ring keeps a buffer of %d items, want it released", len(r.buf))
	}
}
