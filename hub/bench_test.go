package hub

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"testing"
)

// countingSink counts written messages on a WaitGroup and keeps nothing.
type countingSink struct{ written *sync.WaitGroup }

func (s countingSink) Write(context.Context, []byte) error { s.written.Done(); return nil }
func (s countingSink) Close(int, string) error             { return nil }
func (s countingSink) CloseNow() error                     { return nil }

// BenchmarkFanOut measures one event published to 1,000 subscribers, from
// Publish until every writer has written its copy.
func BenchmarkFanOut(b *testing.B) {
	for _, wildcard := range []bool{false, true} {
		b.Run(fmt.Sprintf("wildcard=%v", wildcard), func(b *testing.B) {
			const subscribers = 1000
			pattern := "chat.room1"
			if wildcard {
				pattern = "chat.*"
			}

			h := New(Config{})
			var written sync.WaitGroup
			for range subscribers {
				subscribe(h.Register(countingSink{&written}), 0, pattern)
			}
			ev := Event{
				Topic: "chat.room1",
				Data:  json.RawMessage(`{"user":"alice","text":"hello, everyone in the room"}`),
				TS:    testTS,
			}

			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				ev.ID = int64(i + 1)
				written.Add(subscribers)
				h.Publish(ev)
				written.Wait()
			}
			b.StopTimer()

			if err := h.Shutdown(context.Background(), 1001, "benchmark over"); err != nil {
				b.Fatal(err)
			}
		})
	}
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

	if err := h.Shutdown(context.Background(), 1001, "benchmark over"); err != nil {
		b.Fatal(err)
	}
}
