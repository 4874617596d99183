package hub

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

// countingSink counts written messages on a WaitGroup and keeps nothing.
type countingSink struct{ written *sync.WaitGroup }

func (s countingSink) Write(context.Context, []byte) error { s.written.Done(); return nil }
func (s countingSink) Close(int, string) error             { return nil }
func (s countingSink) CloseNow() error                     { return nil }

// discardSink accepts every message and keeps nothing.
type discardSink struct{}

func (discardSink) Write(context.Context, []byte) error { return nil }
func (discardSink) Close(int, string) error             { return nil }
func (discardSink) CloseNow() error                     { return nil }

// benchData is 100 bytes of JSON event data.
var benchData = json.RawMessage(`{"user":"alice","text":"` + strings.Repeat("x", 100-len(`{"user":"alice","text":""}`)) + `"}`)

// shutdownBench closes h's clients once a benchmark's loop has ended.
func shutdownBench(b *testing.B, h *Hub) {
	b.Helper()

	if err := h.Shutdown(context.Background(), 1001, "benchmark over"); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkEncodePrefix measures the encoding that Publish does once per
// event: the notification up to the subscription id, for a durable event
// with 100 bytes of data.
func BenchmarkEncodePrefix(b *testing.B) {
	ev := Event{Topic: "tenant5.orders.3", Data: benchData, ID: 123456789, TS: testTS}

	b.ReportAllocs()
	for b.Loop() {
		encodePrefix(ev)
	}
}

// BenchmarkPublishLookup measures Publish of one event on a hub whose index
// contains 10,000 subscriptions of 100 clients: 9,000 with distinct literal
// topics and 1,000 with distinct wildcard patterns, a quarter of which
// start with '*'. The topic of "miss" matches none of them, so the figure is
// the encoding, the map lookup and one Match per wildcard pattern. The topic
// of "hit" matches one literal and one wildcard subscription, so two
// messages are queued, and their writers run during the loop. "empty" is
// the same Publish on a hub without subscriptions.
func BenchmarkPublishLookup(b *testing.B) {
	cases := []struct {
		name          string
		subscriptions bool
		topic         string
		delivered     int64
	}{
		{"empty", false, "tenant5.orders.3", 0},
		{"miss", true, "tenant5000.orders.3", 0},
		{"hit", true, "tenant5.orders.3", 2},
	}

	for _, tc := range cases {
		b.Run(tc.name, func(b *testing.B) {
			h := New(Config{})
			if tc.subscriptions {
				indexBenchSubscriptions(h)
			}
			ev := Event{Topic: tc.topic, Data: benchData, TS: testTS}

			h.Publish(ev)
			if got := h.Stats().Delivered; got != tc.delivered {
				b.Fatalf("Stats().Delivered after one Publish = %d, want %d", got, tc.delivered)
			}

			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				ev.ID = int64(i + 1)
				h.Publish(ev)
			}
			b.StopTimer()

			shutdownBench(b, h)
		})
	}
}

// indexBenchSubscriptions adds the 10,000 subscriptions of
// BenchmarkPublishLookup, spread over 100 clients with discarding sinks.
func indexBenchSubscriptions(h *Hub) {
	const clients = 100
	registered := make([]*Client, clients)
	for i := range registered {
		registered[i] = h.Register(discardSink{})
	}

	for k := range 9000 {
		subscribe(registered[k%clients], 0, fmt.Sprintf("tenant%d.orders.%d", k%1000, k/1000))
	}
	for i := range 1000 {
		var pattern string
		switch i % 4 {
		case 0:
			pattern = fmt.Sprintf("tenant%d.orders.*", i)
		case 1:
			pattern = fmt.Sprintf("tenant%d.>", i)
		case 2:
			pattern = fmt.Sprintf("*.invoices.%d", i)
		case 3:
			pattern = fmt.Sprintf("tenant%d.*.status", i)
		}
		subscribe(registered[i%clients], 0, pattern)
	}
}

// BenchmarkFanOut measures one event published to 1,000 and to 10,000
// subscribers, each on its own client, from Publish until every writer has
// written its copy. The metric queued-ns/op is the time of the Publish call
// alone, until every copy is queued, while the first writers already run.
func BenchmarkFanOut(b *testing.B) {
	for _, subscribers := range []int{1000, 10000} {
		for _, wildcard := range []bool{false, true} {
			b.Run(fmt.Sprintf("subscribers=%d/wildcard=%v", subscribers, wildcard), func(b *testing.B) {
				benchFanOut(b, subscribers, wildcard)
			})
		}
	}
}

func benchFanOut(b *testing.B, subscribers int, wildcard bool) {
	pattern := "chat.room1"
	if wildcard {
		pattern = "chat.*"
	}

	h := New(Config{})
	var written sync.WaitGroup
	for range subscribers {
		subscribe(h.Register(countingSink{&written}), 0, pattern)
	}
	ev := Event{Topic: "chat.room1", Data: benchData, TS: testTS}

	// The first event allocates each client's queue and write buffer, which
	// later events reuse, so it is sent before the measurement.
	written.Add(subscribers)
	h.Publish(ev)
	written.Wait()

	var queued time.Duration
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		ev.ID = int64(i + 2)
		written.Add(subscribers)
		start := time.Now()
		h.Publish(ev)
		queued += time.Since(start)
		written.Wait()
	}
	b.StopTimer()

	b.ReportMetric(float64(queued.Nanoseconds())/float64(b.N), "queued-ns/op")
	shutdownBench(b, h)
}

// BenchmarkPublish measures Publish alone: encoding once and queueing for
// 1,000 subscribers, whose writers are stuck in a Write. The queues never
// drain, so the allocations include their growth.
func BenchmarkPublish(b *testing.B) {
	const subscribers = 1000
	h := New(Config{MaxQueueBytes: 1 << 40, QueueBytes: 1 << 40})
	sinks := make([]*fakeSink, subscribers)
	for i := range sinks {
		sinks[i] = newFakeSink()
		sinks[i].hold()
		subscribe(h.Register(sinks[i]), 0, "chat.room1")
	}
	ev := Event{Topic: "chat.room1", Data: json.RawMessage(`{"text":"hello"}`), TS: testTS}

	b.ReportAllocs()
	for b.Loop() {
		h.Publish(ev)
	}
	b.StopTimer()

	shutdownBench(b, h)
}
