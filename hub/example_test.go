package hub_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"

	"github.com/pgsidecar/sidecar/hub"
	"github.com/pgsidecar/sidecar/topic"
)

// printSink prints each message and reports it on written.
type printSink struct{ written chan struct{} }

func (s printSink) Write(_ context.Context, msg []byte) error {
	fmt.Println(string(msg))
	s.written <- struct{}{}
	return nil
}

func (s printSink) Close(code int, reason string) error {
	fmt.Println("close", code, reason)
	return nil
}

func (s printSink) CloseNow() error { return nil }

func Example() {
	h := hub.New(hub.Config{})
	h.SetWatermark(41)
	sink := printSink{written: make(chan struct{}, 8)}
	c := h.Register(sink, slog.String("client_id", "c1"))

	// Subscribe, send the result, replay from the store, then go live.
	sub, head := c.Subscribe([]topic.Pattern{topic.MustParse("orders.*")}, 40)
	c.Send(fmt.Appendf(nil, `{"jsonrpc":"2.0","id":1,"result":{"subscription":%q,"head":%d}}`, sub.ID(), head))
	sub.Start([]hub.Event{{Topic: "orders.7", Data: json.RawMessage(`{"total":3}`), ID: 41, TS: "2026-12-04T10:00:00.000001Z"}})
	h.Publish(hub.Event{Topic: "orders.42", Data: json.RawMessage(`{"total":12}`), ID: 42, TS: "2026-12-04T10:00:00.123456Z"})

	// Shutdown discards what is still queued, so wait for the three messages.
	for range 3 {
		<-sink.written
	}
	if err := h.Shutdown(context.Background(), 1012, "sidecar draining"); err != nil {
		fmt.Println(err)
	}

	// Output:
	// {"jsonrpc":"2.0","id":1,"result":{"subscription":"s1","head":41}}
	// {"jsonrpc":"2.0","method":"event","params":{"topic":"orders.7","data":{"total":3},"id":41,"ts":"2026-12-04T10:00:00.000001Z","subscription":"s1"}}
	// {"jsonrpc":"2.0","method":"event","params":{"topic":"orders.42","data":{"total":12},"id":42,"ts":"2026-12-04T10:00:00.123456Z","subscription":"s1"}}
	// close 1012 sidecar draining
}
