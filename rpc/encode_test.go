package rpc

import (
	"encoding/json"
	"math"
	"testing"
)

func TestEncode(t *testing.T) {
	tests := []struct {
		name string
		got  []byte
		want string
	}{
		{
			name: "result",
			got:  EncodeResult(raw(`7`), map[string]int{"id": 3}),
			want: `{"jsonrpc":"2.0","id":7,"result":{"id":3}}`,
		},
		{
			name: "result echoes id byte for byte",
			got:  EncodeResult(raw(`1.50e2`), "pong"),
			want: `{"jsonrpc":"2.0","id":1.50e2,"result":"pong"}`,
		},
		{
			name: "nil result",
			got:  EncodeResult(raw(`"a"`), nil),
			want: `{"jsonrpc":"2.0","id":"a","result":null}`,
		},
		{
			name: "raw result copied verbatim",
			got:  EncodeResult(raw(`1`), json.RawMessage(`{"b": 2,  "a": 1}`)),
			want: `{"jsonrpc":"2.0","id":1,"result":{"b": 2,  "a": 1}}`,
		},
		{
			name: "no HTML escaping",
			got:  EncodeResult(raw(`1`), "<b>&</b>"),
			want: `{"jsonrpc":"2.0","id":1,"result":"<b>&</b>"}`,
		},
		{
			name: "result that cannot be encoded",
			got:  EncodeResult(raw(`1`), math.NaN()),
			want: `{"jsonrpc":"2.0","id":1,"error":{"code":-32603,"message":"internal error: the result cannot be encoded as JSON"}}`,
		},
		{
			name: "error",
			got:  EncodeError(raw(`"r1"`), Errorf(CodeForbidden, "topic %q is not allowed", "x")),
			want: `{"jsonrpc":"2.0","id":"r1","error":{"code":-32003,"message":"topic \"x\" is not allowed"}}`,
		},
		{
			name: "error with nil id",
			got:  EncodeError(nil, Errorf(CodeParseError, "parse error")),
			want: `{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"parse error"}}`,
		},
		{
			name: "error with data",
			got:  EncodeError(raw(`1`), &Error{Code: 5, Message: "m", Data: json.RawMessage(`{"k":[1]}`)}),
			want: `{"jsonrpc":"2.0","id":1,"error":{"code":5,"message":"m","data":{"k":[1]}}}`,
		},
		{
			name: "error with data that cannot be encoded",
			got:  EncodeError(raw(`1`), &Error{Code: 5, Message: "m", Data: make(chan int)}),
			want: `{"jsonrpc":"2.0","id":1,"error":{"code":5,"message":"m"}}`,
		},
		{
			name: "nil error",
			got:  EncodeError(raw(`1`), nil),
			want: `{"jsonrpc":"2.0","id":1,"error":{"code":-32603,"message":"internal error"}}`,
		},
		{
			name: "notification",
			got:  EncodeNotification("welcome", map[string]any{"heartbeat_s": 25}),
			want: `{"jsonrpc":"2.0","method":"welcome","params":{"heartbeat_s":25}}`,
		},
		{
			name: "notification without params",
			got:  EncodeNotification("heartbeat", nil),
			want: `{"jsonrpc":"2.0","method":"heartbeat"}`,
		},
		{
			name: "notification method escaped",
			got:  EncodeNotification("a\"b", nil),
			want: `{"jsonrpc":"2.0","method":"a\"b"}`,
		},
		{
			name: "request",
			got:  EncodeRequest(raw(`"s-1"`), "app.refresh", []int{1}),
			want: `{"jsonrpc":"2.0","id":"s-1","method":"app.refresh","params":[1]}`,
		},
		{
			name: "request with raw params",
			got:  EncodeRequest(raw(`9`), "app.x", json.RawMessage(`{"a" : 1}`)),
			want: `{"jsonrpc":"2.0","id":9,"method":"app.x","params":{"a" : 1}}`,
		},
		{
			name: "request with nil id",
			got:  EncodeRequest(nil, "m", nil),
			want: `{"jsonrpc":"2.0","id":null,"method":"m"}`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if string(tt.got) != tt.want {
				t.Errorf("got  %s\nwant %s", tt.got, tt.want)
			}
			if !json.Valid(tt.got) {
				t.Errorf("output is not valid JSON: %s", tt.got)
			}
		})
	}
}

func TestEncodeParamsThatCannotBeEncoded(t *testing.T) {
	if got := EncodeNotification("m", func() {}); got != nil {
		t.Errorf("EncodeNotification with a func = %s, want nil", got)
	}
	if got := EncodeRequest(raw(`1`), "m", json.RawMessage(`{`)); got != nil {
		t.Errorf("EncodeRequest with invalid raw params = %s, want nil", got)
	}
}

func TestEncodeDecodeRoundTrip(t *testing.T) {
	req, err := Decode(EncodeRequest(raw(`"x"`), "app.ping", map[string]int{"n": 1}))
	if err != nil {
		t.Fatalf("Decode(EncodeRequest) error = %v", err)
	}
	if req.Kind != KindRequest || req.Method != "app.ping" || string(req.ID) != `"x"` || string(req.Params) != `{"n":1}` {
		t.Errorf("Decode(EncodeRequest) = %+v", req)
	}

	resp, err := Decode(EncodeError(raw(`4`), &Error{Code: CodeHistoryExpired, Message: "history expired", Data: map[string]int{"head": 9}}))
	if err != nil {
		t.Fatalf("Decode(EncodeError) error = %v", err)
	}
	if resp.Kind != KindResponse || resp.Error == nil || resp.Error.Code != CodeHistoryExpired {
		t.Fatalf("Decode(EncodeError) = %+v, want an error response with code %d", resp, CodeHistoryExpired)
	}
	if data, _ := resp.Error.Data.(json.RawMessage); string(data) != `{"head":9}` {
		t.Errorf("Decode(EncodeError) data = %v, want raw {\"head\":9}", resp.Error.Data)
	}
}

func BenchmarkEncodeNotification(b *testing.B) {
	type event struct {
		Subscription string          `json:"subscription"`
		Topic        string          `json:"topic"`
		Data         json.RawMessage `json:"data"`
		ID           int64           `json:"id"`
		TS           string          `json:"ts"`
	}
	ev := event{
		Subscription: "s1",
		Topic:        "orders.42",
		Data:         json.RawMessage(`{"status":"shipped","items":[1,2,3]}`),
		ID:           1234,
		TS:           "2026-12-04T10:00:00.123456Z",
	}
	b.ReportAllocs()
	for b.Loop() {
		if EncodeNotification("event", ev) == nil {
			b.Fatal("EncodeNotification returned nil")
		}
	}
}
