package hub

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/pgsidecar/sidecar/topic"
)

func TestPublishFanOut(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newTestHub(t, Config{})
		const clients, published = 50, 20

		sinks := make([]*fakeSink, clients)
		for i := range sinks {
			sinks[i] = newFakeSink()
			subscribe(h.Register(sinks[i]), 0, "orders.*")
		}
		for id := int64(1); id <= published; id++ {
			h.Publish(durable("orders.42", id))
		}
		synctest.Wait()

		var want []string
		for id := int64(1); id <= published; id++ {
			want = append(want, eventLine("s1", "orders.42", id))
		}
		for i, sink := range sinks {
			if diff := cmp.Diff(events(t, sink), want); diff != "" {
				t.Errorf("client %d events (-got +want):\n%s", i, diff)
			}
		}

		stats := h.Stats()
		if stats.Published != published {
			t.Errorf("Stats().Published = %d, want %d", stats.Published, published)
		}
		if stats.Delivered != clients*published {
			t.Errorf("Stats().Delivered = %d, want %d", stats.Delivered, clients*published)
		}
	})
}

func TestEventNotificationFormat(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newTestHub(t, Config{})
		sink := newFakeSink()
		subscribe(h.Register(sink), 0, "chat.*")

		h.Publish(Event{Topic: "chat.room1", Data: json.RawMessage(`{"text": "hi"}`), ID: 7, TS: testTS})
		h.Publish(Event{Topic: "chat.room1", Data: json.RawMessage(`"typing"`), TS: testTS})
		synctest.Wait()

		want := []string{
			`{"jsonrpc":"2.0","method":"event","params":{"topic":"chat.room1","data":{"text": "hi"},"id":7,"ts":"2026-12-04T10:00:00.123456Z","subscription":"s1"}}`,
			`{"jsonrpc":"2.0","method":"event","params":{"topic":"chat.room1","data":"typing","ts":"2026-12-04T10:00:00.123456Z","subscription":"s1"}}`,
		}
		if diff := cmp.Diff(sink.messages(), want); diff != "" {
			t.Errorf("messages (-got +want):\n%s", diff)
		}
	})
}

func TestOneDeliveryPerSubscription(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newTestHub(t, Config{})
		sink := newFakeSink()
		c := h.Register(sink)
		subscribe(c, 0, "orders.*", "orders.>", "orders.1", "orders.1")
		subscribe(c, 0, "orders.1")

		h.Publish(durable("orders.1", 1))
		h.Publish(durable("orders.2", 2))
		synctest.Wait()

		want := []string{
			eventLine("s1", "orders.1", 1),
			eventLine("s2", "orders.1", 1),
			eventLine("s1", "orders.2", 2),
		}
		got := events(t, sink)
		// The order between subscriptions is not defined; within one it is.
		if diff := cmp.Diff(got, want, sortStrings); diff != "" {
			t.Errorf("events (-got +want):\n%s", diff)
		}
	})
}

var sortStrings = cmpopts.SortSlices(func(a, b string) bool { return a < b })

func TestPerSubscriptionOrder(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newTestHub(t, Config{})
		sink := newFakeSink()
		c := h.Register(sink)
		subscribe(c, 0, "a.>")
		subscribe(c, 0, "*.x", "b.y")

		topics := []string{"a.x", "b.y", "a.y", "b.x", "c.x"}
		for id := int64(1); id <= 100; id++ {
			h.Publish(durable(topics[id%int64(len(topics))], id))
		}
		synctest.Wait()

		last := map[string]int64{}
		count := map[string]int{}
		for _, line := range events(t, sink) {
			var sub, topic string
			var id int64
			if _, err := fmt.Sscanf(line, "%s %s #%d", &sub, &topic, &id); err != nil {
				t.Fatalf("event %q: %v", line, err)
			}
			if id <= last[sub] {
				t.Errorf("subscription %s got id %d after %d, want increasing ids", sub, id, last[sub])
			}
			last[sub] = id
			count[sub]++
		}
		// a.> gets a.x and a.y; *.x and b.y get a.x, b.y, b.x and c.x.
		if count["s1"] != 40 {
			t.Errorf("s1 got %d events, want 40", count["s1"])
		}
		if count["s2"] != 80 {
			t.Errorf("s2 got %d events, want 80", count["s2"])
		}
	})
}

func TestPatternMatching(t *testing.T) {
	tests := []struct {
		pattern string
		topic   string
		want    bool
	}{
		{"orders.42", "orders.42", true},
		{"orders.42", "orders.43", false},
		{"orders.*", "orders.42", true},
		{"orders.*", "orders.42.lines", false},
		{"orders.>", "orders.42.lines", true},
		{"*.42", "orders.42", true},
		{">", "orders.42", true},
		{">", "db.public.users", false},
		{"*.>", "db.public.users", false},
		{"*.public.users", "db.public.users", false},
		{">", "presence.room1", false},
		{"*", "sys", false},
		{"db.>", "db.public.users", true},
		{"db.*.users", "db.public.users", true},
		{"db.public.users", "db.public.users", true},
		{"presence.*", "presence.room1", true},
	}
	for _, tt := range tests {
		t.Run(tt.pattern+" "+tt.topic, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				h := newTestHub(t, Config{})
				sink := newFakeSink()
				subscribe(h.Register(sink), 0, tt.pattern)

				h.Publish(durable(tt.topic, 1))
				synctest.Wait()

				if got := len(events(t, sink)) == 1; got != tt.want {
					t.Errorf("pattern %q got an event on %q = %v, want %v", tt.pattern, tt.topic, got, tt.want)
				}
			})
		})
	}
}

func TestStartOrdersReplayBeforeHeldEvents(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newTestHub(t, Config{})
		h.SetWatermark(10)
		sink := newFakeSink()
		c := h.Register(sink)

		sub, watermark := c.Subscribe(parsePatterns("orders.*"), 5)
		if watermark != 10 {
			t.Errorf("Subscribe watermark = %d, want 10", watermark)
		}
		h.Publish(durable("orders.1", 11))
		h.Publish(ephemeral("orders.1", `"typing"`))
		h.Publish(durable("orders.1", 12))
		synctest.Wait()
		if got := sink.messages(); len(got) != 0 {
			t.Fatalf("messages before Start = %q, want none", got)
		}

		result := `{"jsonrpc":"2.0","id":1,"result":{"subscription":"s1","head":10}}`
		c.Send([]byte(result))
		var replay []Event
		for id := int64(6); id <= 10; id++ {
			replay = append(replay, durable("orders.1", id))
		}
		h.Publish(durable("orders.1", 13))
		sub.Start(replay)
		h.Publish(durable("orders.1", 14))
		synctest.Wait()

		want := []string{result}
		for id := int64(6); id <= 11; id++ {
			want = append(want, eventLine("s1", "orders.1", id))
		}
		want = append(want,
			received{"s1", "orders.1", 0, `"typing"`}.String(),
			eventLine("s1", "orders.1", 12),
			eventLine("s1", "orders.1", 13),
			eventLine("s1", "orders.1", 14),
		)
		if diff := cmp.Diff(summarize(t, sink.messages()), want); diff != "" {
			t.Errorf("messages (-got +want):\n%s", diff)
		}
	})
}

func TestStartDropsDuplicatesAtSeam(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newTestHub(t, Config{})
		h.SetWatermark(10)
		sink := newFakeSink()
		c := h.Register(sink)

		sub, _ := c.Subscribe(parsePatterns("orders.*"), 5)
		h.Publish(durable("orders.1", 11))
		h.Publish(ephemeral("orders.1", `"typing"`))
		h.Publish(durable("orders.1", 12))
		h.Publish(durable("orders.1", 13))

		// The replay was read after 11 and 12 had committed.
		var replay []Event
		for id := int64(6); id <= 12; id++ {
			replay = append(replay, durable("orders.1", id))
		}
		sub.Start(replay)
		h.Publish(durable("orders.1", 12)) // a late duplicate from the relay
		h.Publish(durable("orders.1", 14))
		synctest.Wait()

		var want []string
		for id := int64(6); id <= 12; id++ {
			want = append(want, eventLine("s1", "orders.1", id))
		}
		want = append(want,
			received{"s1", "orders.1", 0, `"typing"`}.String(),
			eventLine("s1", "orders.1", 13),
			eventLine("s1", "orders.1", 14),
		)
		if diff := cmp.Diff(events(t, sink), want); diff != "" {
			t.Errorf("events (-got +want):\n%s", diff)
		}
		if got := h.Stats().Duplicates; got != 3 {
			t.Errorf("Stats().Duplicates = %d, want 3", got)
		}
	})
}

func TestResumePointAboveWatermark(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newTestHub(t, Config{})
		h.SetWatermark(10)
		sink := newFakeSink()
		c := h.Register(sink)

		// The client saw id 15 on another server that is ahead of this one.
		sub, watermark := c.Subscribe(parsePatterns("orders.*"), 15)
		if watermark != 10 {
			t.Errorf("Subscribe watermark = %d, want 10", watermark)
		}
		sub.Start(nil)
		for id := int64(11); id <= 16; id++ {
			h.Publish(durable("orders.1", id))
		}
		synctest.Wait()

		want := []string{eventLine("s1", "orders.1", 16)}
		if diff := cmp.Diff(events(t, sink), want); diff != "" {
			t.Errorf("events (-got +want):\n%s", diff)
		}
	})
}

func TestWatermark(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newTestHub(t, Config{})
		if got := h.Watermark(); got != 0 {
			t.Errorf("Watermark() of a new hub = %d, want 0", got)
		}

		h.SetWatermark(40)
		if got := h.Watermark(); got != 40 {
			t.Errorf("Watermark() after SetWatermark(40) = %d, want 40", got)
		}

		h.Publish(durable("orders.1", 41))
		if got := h.Watermark(); got != 41 {
			t.Errorf("Watermark() after publishing 41 = %d, want 41", got)
		}

		h.Publish(ephemeral("orders.1", `null`))
		if got := h.Watermark(); got != 41 {
			t.Errorf("Watermark() after an ephemeral event = %d, want 41", got)
		}
	})
}

func TestSlowClientClosedAfterGrace(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newTestHub(t, Config{QueueBytes: 1024, SlowGrace: 5 * time.Second, WriteTimeout: time.Hour})
		slowSink, fastSink := newFakeSink(), newFakeSink()
		slowSink.hold()
		slow := h.Register(slowSink)
		subscribe(slow, 0, "chat.room1")
		subscribe(h.Register(fastSink), 0, "chat.room1")

		for id := int64(1); id <= 50; id++ {
			h.Publish(durable("chat.room1", id))
		}
		synctest.Wait()

		time.Sleep(5*time.Second - time.Millisecond)
		synctest.Wait()
		if _, _, closeCalled, _ := slowSink.closed(); closeCalled {
			t.Fatal("slow client closed before the grace period ended")
		}

		time.Sleep(time.Millisecond)
		synctest.Wait()
		checkClosedTooSlow(t, slowSink)
		if !isDone(slow) {
			t.Error("slow client Done not closed")
		}

		for id := int64(51); id <= 100; id++ {
			h.Publish(durable("chat.room1", id))
		}
		synctest.Wait()
		if got := len(events(t, fastSink)); got != 100 {
			t.Errorf("fast client got %d events, want 100", got)
		}

		stats := h.Stats()
		if stats.SlowCloses != 1 {
			t.Errorf("Stats().SlowCloses = %d, want 1", stats.SlowCloses)
		}
		if stats.Dropped == 0 {
			t.Error("Stats().Dropped = 0, want the slow client's queue")
		}
		if stats.Clients != 1 {
			t.Errorf("Stats().Clients = %d, want 1", stats.Clients)
		}
		if stats.Subscriptions != 1 {
			t.Errorf("Stats().Subscriptions = %d, want 1", stats.Subscriptions)
		}
	})
}

func TestGraceRestartsAfterQueueDrains(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newTestHub(t, Config{QueueBytes: 1024, SlowGrace: 5 * time.Second, WriteTimeout: time.Hour})
		sink := newFakeSink()
		sink.hold()
		c := h.Register(sink)
		subscribe(c, 0, "chat.room1")

		for id := int64(1); id <= 50; id++ {
			h.Publish(durable("chat.room1", id))
		}
		time.Sleep(3 * time.Second)
		sink.release()
		synctest.Wait()

		sink.hold()
		for id := int64(51); id <= 100; id++ {
			h.Publish(durable("chat.room1", id))
		}
		time.Sleep(4 * time.Second)
		synctest.Wait()
		if isDone(c) {
			t.Fatal("client closed 7 s after its queue first went over the limit, want the grace period to restart when it drained")
		}

		time.Sleep(time.Second)
		synctest.Wait()
		checkClosedTooSlow(t, sink)
	})
}

func TestBurstToReaderDoesNotClose(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newTestHub(t, Config{})
		sink := newFakeSink()
		sink.setDelay(time.Millisecond)
		c := h.Register(sink)
		subscribe(c, 0, "db.public.orders")

		data := json.RawMessage(`"` + strings.Repeat("x", 4096) + `"`)
		const burst = 2000
		for id := int64(1); id <= burst; id++ {
			h.Publish(Event{Topic: "db.public.orders", Data: data, ID: id, TS: testTS})
		}
		time.Sleep(time.Minute)
		synctest.Wait()

		if isDone(c) {
			t.Error("client that keeps reading was closed after a burst")
		}
		if got := len(sink.messages()); got != burst {
			t.Errorf("client got %d messages, want %d", got, burst)
		}
		if got := h.Stats().SlowCloses; got != 0 {
			t.Errorf("Stats().SlowCloses = %d, want 0", got)
		}
	})
}

func TestWriteTimeoutCloses(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newTestHub(t, Config{WriteTimeout: 10 * time.Second, SlowGrace: time.Hour})
		sink := newFakeSink()
		sink.hold()
		c := h.Register(sink)
		c.Send([]byte(`{"jsonrpc":"2.0","method":"welcome"}`))
		synctest.Wait()

		time.Sleep(10*time.Second - time.Millisecond)
		synctest.Wait()
		if isDone(c) {
			t.Fatal("client closed before its write timed out")
		}

		time.Sleep(time.Millisecond)
		synctest.Wait()
		checkClosedTooSlow(t, sink)
		if !isDone(c) {
			t.Error("client Done not closed")
		}
		if got := h.Stats().SlowCloses; got != 1 {
			t.Errorf("Stats().SlowCloses = %d, want 1", got)
		}
	})
}

func TestWritesUnderTimeoutDoNotClose(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newTestHub(t, Config{WriteTimeout: 10 * time.Second, SlowGrace: time.Hour})
		sink := newFakeSink()
		sink.setDelay(10*time.Second - time.Millisecond)
		c := h.Register(sink)
		for range 3 {
			c.Send([]byte(`"x"`))
		}

		time.Sleep(time.Minute)
		synctest.Wait()
		if isDone(c) {
			t.Error("client closed although each write took less than the write timeout")
		}
		if got := len(sink.messages()); got != 3 {
			t.Errorf("client got %d messages, want 3", got)
		}
	})
}

func TestHardCapClosesAtOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newTestHub(t, Config{QueueBytes: 1024, MaxQueueBytes: 4096, SlowGrace: time.Hour, WriteTimeout: time.Hour})
		sink := newFakeSink()
		sink.hold()
		c := h.Register(sink)
		subscribe(c, 0, "files.>")
		start := time.Now()

		data := json.RawMessage(`"` + strings.Repeat("x", 1000) + `"`)
		for id := int64(1); id <= 5; id++ {
			h.Publish(Event{Topic: "files.a", Data: data, ID: id, TS: testTS})
		}
		synctest.Wait()

		checkClosedTooSlow(t, sink)
		if !isDone(c) {
			t.Error("client Done not closed")
		}
		if elapsed := time.Since(start); elapsed != 0 {
			t.Errorf("client closed after %s, want at once", elapsed)
		}
		if c.Send([]byte(`"x"`)) {
			t.Error("Send after the close = true, want false")
		}
	})
}

func TestHeldEventsOverCapClose(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newTestHub(t, Config{QueueBytes: 1024, MaxQueueBytes: 4096})
		sink := newFakeSink()
		c := h.Register(sink)
		sub, _ := c.Subscribe(parsePatterns("files.>"), 0)

		data := json.RawMessage(`"` + strings.Repeat("x", 1000) + `"`)
		for id := int64(1); id <= 5; id++ {
			h.Publish(Event{Topic: "files.a", Data: data, ID: id, TS: testTS})
		}
		synctest.Wait()

		checkClosedTooSlow(t, sink)
		sub.Start(nil) // does nothing once closed
		synctest.Wait()
		if got := sink.messages(); len(got) != 0 {
			t.Errorf("messages = %d, want none", len(got))
		}
	})
}

func TestPublishDoesNotWaitForStuckWrite(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newTestHub(t, Config{SlowGrace: time.Hour, WriteTimeout: time.Hour})
		stuckSink, sink := newFakeSink(), newFakeSink()
		stuckSink.hold()
		subscribe(h.Register(stuckSink), 0, "chat.*")
		subscribe(h.Register(sink), 0, "chat.*")

		// If Publish waited for the stuck write, synctest would report a
		// deadlock here.
		for id := int64(1); id <= 1000; id++ {
			h.Publish(durable("chat.room1", id))
		}
		synctest.Wait()

		if got := len(events(t, sink)); got != 1000 {
			t.Errorf("reading client got %d events, want 1000", got)
		}
		if got := len(stuckSink.messages()); got != 0 {
			t.Errorf("stuck client got %d events, want 0", got)
		}
	})
}

func TestUnsubscribeStopsDelivery(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newTestHub(t, Config{})
		sink := newFakeSink()
		c := h.Register(sink)
		first := subscribe(c, 0, "orders.*")
		subscribe(c, 0, "orders.>")

		h.Publish(durable("orders.1", 1))
		synctest.Wait()
		if !c.Unsubscribe(first.ID()) {
			t.Errorf("Unsubscribe(%q) = false, want true", first.ID())
		}
		h.Publish(durable("orders.1", 2))
		synctest.Wait()

		want := []string{
			eventLine("s1", "orders.1", 1),
			eventLine("s2", "orders.1", 1),
			eventLine("s2", "orders.1", 2),
		}
		if diff := cmp.Diff(events(t, sink), want, sortStrings); diff != "" {
			t.Errorf("events (-got +want):\n%s", diff)
		}
		if c.Unsubscribe(first.ID()) {
			t.Errorf("second Unsubscribe(%q) = true, want false", first.ID())
		}
		if c.Unsubscribe("s99") {
			t.Error(`Unsubscribe("s99") = true, want false`)
		}
		if got := h.Stats().Subscriptions; got != 1 {
			t.Errorf("Stats().Subscriptions = %d, want 1", got)
		}
	})
}

func TestSubscriptionIDs(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newTestHub(t, Config{})
		a, b := h.Register(newFakeSink()), h.Register(newFakeSink())

		var got []string
		for _, c := range []*Client{a, a, b, a} {
			got = append(got, subscribe(c, 0, "x").ID())
		}
		want := []string{"s1", "s2", "s1", "s3"}
		if diff := cmp.Diff(got, want); diff != "" {
			t.Errorf("subscription ids (-got +want):\n%s", diff)
		}
	})
}

func TestHeartbeat(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const heartbeat = `{"jsonrpc":"2.0","method":"heartbeat"}`
		h := newTestHub(t, Config{Heartbeat: 25 * time.Second, HeartbeatMsg: []byte(heartbeat)})
		sink := newFakeSink()
		c := h.Register(sink)

		time.Sleep(25*time.Second - time.Millisecond)
		synctest.Wait()
		if got := len(sink.messages()); got != 0 {
			t.Fatalf("messages before the heartbeat interval = %d, want 0", got)
		}

		time.Sleep(time.Millisecond) // 25 s
		synctest.Wait()
		if diff := cmp.Diff(sink.messages(), []string{heartbeat}); diff != "" {
			t.Fatalf("messages after 25 s (-got +want):\n%s", diff)
		}

		time.Sleep(5 * time.Second) // 30 s
		c.Send([]byte(`"x"`))
		time.Sleep(25*time.Second - time.Millisecond)
		synctest.Wait()
		if diff := cmp.Diff(sink.messages(), []string{heartbeat, `"x"`}); diff != "" {
			t.Fatalf("messages 25 s after a write (-got +want):\n%s", diff)
		}

		time.Sleep(time.Millisecond) // 55 s
		synctest.Wait()
		if diff := cmp.Diff(sink.messages(), []string{heartbeat, `"x"`, heartbeat}); diff != "" {
			t.Errorf("messages after 55 s (-got +want):\n%s", diff)
		}
	})
}

func TestWriteErrorDropsClient(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newTestHub(t, Config{})
		sink := newFakeSink()
		sink.failWrites(errors.New("connection reset by peer"))
		c := h.Register(sink)
		subscribe(c, 0, "orders.*")

		h.Publish(durable("orders.1", 1))
		synctest.Wait()

		_, _, closeCalled, nowCalled := sink.closed()
		if closeCalled {
			t.Error("Sink.Close called after a failed write, want only CloseNow")
		}
		if !nowCalled {
			t.Error("Sink.CloseNow not called after a failed write")
		}
		if !isDone(c) {
			t.Error("client Done not closed")
		}

		stats := h.Stats()
		if stats.WriteErrors != 1 {
			t.Errorf("Stats().WriteErrors = %d, want 1", stats.WriteErrors)
		}
		if stats.Clients != 0 {
			t.Errorf("Stats().Clients = %d, want 0", stats.Clients)
		}
		if stats.Subscriptions != 0 {
			t.Errorf("Stats().Subscriptions = %d, want 0", stats.Subscriptions)
		}
	})
}

func TestCloseIsIdempotent(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newTestHub(t, Config{})
		sink := newFakeSink()
		c := h.Register(sink)
		subscribe(c, 0, "orders.*")

		c.Close(1008, "token expired")
		c.Close(1000, "bye")
		<-c.Done()

		code, reason, _, _ := sink.closed()
		if code != 1008 {
			t.Errorf("close code = %d, want 1008", code)
		}
		if reason != "token expired" {
			t.Errorf("close reason = %q, want %q", reason, "token expired")
		}
		sink.mu.Lock()
		closeCalls := sink.closeCalls
		sink.mu.Unlock()
		if closeCalls != 1 {
			t.Errorf("Sink.Close calls = %d, want 1", closeCalls)
		}
		if c.Send([]byte(`"x"`)) {
			t.Error("Send after Close = true, want false")
		}
		if sub, _ := c.Subscribe(parsePatterns("orders.*"), 0); sub == nil {
			t.Error("Subscribe after Close = nil, want a subscription that receives nothing")
		}
		if got := h.Stats().Subscriptions; got != 0 {
			t.Errorf("Stats().Subscriptions = %d, want 0", got)
		}
	})
}

func TestShutdownClosesAllClients(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := New(Config{})
		sinks := make([]*fakeSink, 3)
		clients := make([]*Client, 3)
		for i := range sinks {
			sinks[i] = newFakeSink()
			clients[i] = h.Register(sinks[i])
			subscribe(clients[i], 0, "orders.*")
		}
		sinks[0].hold() // a write in progress does not stop the shutdown
		clients[0].Send([]byte(`"x"`))

		if err := h.Shutdown(context.Background(), 1012, "sidecar draining"); err != nil {
			t.Fatalf("Shutdown = %v, want nil", err)
		}

		for i, sink := range sinks {
			code, reason, _, _ := sink.closed()
			if code != 1012 {
				t.Errorf("client %d close code = %d, want 1012", i, code)
			}
			if reason != "sidecar draining" {
				t.Errorf("client %d close reason = %q, want %q", i, reason, "sidecar draining")
			}
			if !isDone(clients[i]) {
				t.Errorf("client %d Done not closed", i)
			}
		}
		stats := h.Stats()
		if stats.Clients != 0 {
			t.Errorf("Stats().Clients = %d, want 0", stats.Clients)
		}
		if stats.Subscriptions != 0 {
			t.Errorf("Stats().Subscriptions = %d, want 0", stats.Subscriptions)
		}

		late := newFakeSink()
		c := h.Register(late)
		<-c.Done()
		if code, _, _, _ := late.closed(); code != 1012 {
			t.Errorf("client registered after Shutdown closed with %d, want 1012", code)
		}
	})
}

func TestShutdownDropsStragglers(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := New(Config{})
		quick, straggler := newFakeSink(), newFakeSink()
		straggler.blockClose()
		h.Register(quick)
		h.Register(straggler)

		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		err := h.Shutdown(ctx, 1012, "sidecar draining")
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Shutdown = %v, want an error wrapping %v", err, context.DeadlineExceeded)
		}

		if _, _, _, nowCalled := quick.closed(); nowCalled {
			t.Error("CloseNow called on a client that finished the handshake")
		}
		if _, _, _, nowCalled := straggler.closed(); !nowCalled {
			t.Error("CloseNow not called on the straggler")
		}
		if got := h.Stats().Clients; got != 0 {
			t.Errorf("Stats().Clients = %d, want 0", got)
		}
	})
}

// lockedBuffer is a bytes.Buffer safe for concurrent writes.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestLogLinesCarryClientAttrs(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var logs lockedBuffer
		logger := slog.New(slog.NewTextHandler(&logs, nil))
		h := newTestHub(t, Config{QueueBytes: 10, MaxQueueBytes: 10, Logger: logger})
		sink := newFakeSink()
		sink.hold()
		c := h.Register(sink, slog.String("client_id", "c7"), slog.String("subject", "alice"))

		c.Send([]byte(`"more than ten bytes"`))
		synctest.Wait()

		line := logs.String()
		for _, want := range []string{"closing slow client", "client_id=c7", "subject=alice"} {
			if !strings.Contains(line, want) {
				t.Errorf("log = %q, want it to contain %q", line, want)
			}
		}
	})
}

// TestConcurrentUse runs every operation at once in real time, for the race
// detector.
func TestConcurrentUse(t *testing.T) {
	h := New(Config{QueueBytes: 4096, SlowGrace: 10 * time.Millisecond})
	ctx := t.Context()

	var wg sync.WaitGroup
	wg.Go(func() {
		for id := int64(1); id <= 2000 && ctx.Err() == nil; id++ {
			h.Publish(durable(fmt.Sprintf("room.%d", id%7), id))
		}
	})
	for i := range 8 {
		wg.Go(func() {
			sink := newFakeSink()
			if i%3 == 0 {
				sink.setDelay(time.Millisecond)
			}
			c := h.Register(sink)
			for j := range 50 {
				sub, _ := c.Subscribe(parsePatterns("room.*", fmt.Sprintf("room.%d", j%7)), 0)
				c.Send([]byte(`"x"`))
				sub.Start([]Event{durable("room.1", 1)})
				if j%2 == 0 {
					c.Unsubscribe(sub.ID())
				}
				_ = h.Stats()
			}
			if i%2 == 0 {
				c.Close(1000, "done")
				<-c.Done()
			}
		})
	}
	wg.Wait()

	shutdownCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := h.Shutdown(shutdownCtx, 1012, "sidecar draining"); err != nil {
		t.Errorf("Shutdown = %v, want nil", err)
	}
	if got := h.Stats().Clients; got != 0 {
		t.Errorf("Stats().Clients after Shutdown = %d, want 0", got)
	}
}

// With many wildcard patterns in one hub, each event reaches exactly the
// subscriptions whose pattern matches it, as Pattern.Match decides, also
// after some of them are removed from the index.
func TestWildcardIndexAgreesWithMatch(t *testing.T) {
	patterns := []string{
		">", "*", "*.>", "*.42", "orders.>", "orders.*", "orders.*.lines", "orders.42.>",
		"orders.42.*", "orders.42.lines.>", "users.7.>", "users.*.inbox", "db.>", "db.*.users",
		"presence.*", "a.b.c.d.>", "a.*.c.*", "a.b.*.d",
	}
	topics := []string{
		"orders", "orders.42", "orders.43", "orders.42.lines", "orders.42.lines.7", "users.7",
		"users.7.inbox", "users.8.inbox", "db.public.users", "presence.room1", "sys", "a.b.c.d",
		"a.b.c.d.e", "a.x.c.y", "x.42",
	}

	synctest.Test(t, func(t *testing.T) {
		h := newTestHub(t, Config{})
		sinks := make([]*fakeSink, len(patterns))
		subs := make([]*Subscription, len(patterns))
		clients := make([]*Client, len(patterns))
		for i, p := range patterns {
			sinks[i] = newFakeSink()
			clients[i] = h.Register(sinks[i])
			subs[i] = subscribe(clients[i], 0, p)
		}
		// A second subscriber of one pattern, removed below, must not take
		// the group with it.
		extra := h.Register(newFakeSink())
		extraSub := subscribe(extra, 0, "orders.42.>")

		check := func(round int, removed map[int]bool) {
			for j, tp := range topics {
				id := int64(round*100 + j + 1)
				h.Publish(durable(tp, id))
				synctest.Wait()
				for i, p := range patterns {
					got := slices.Contains(events(t, sinks[i]), eventLine(subs[i].ID(), tp, id))
					want := !removed[i] && topic.MustParse(p).Match(tp)
					if got != want {
						t.Errorf("round %d: pattern %q got %q = %v, want %v", round, p, tp, got, want)
					}
				}
			}
		}
		check(0, nil)

		removed := map[int]bool{0: true, 4: true, 9: true, 15: true}
		for i := range removed {
			clients[i].Unsubscribe(subs[i].ID())
		}
		extra.Unsubscribe(extraSub.ID())
		check(1, removed)
	})
}

// DeliveryLatency receives each live event that a writer wrote, measured from
// the event's Published, and neither replayed events nor other messages.
func TestDeliveryLatencyCountsLiveEventsOnly(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var mu sync.Mutex
		var seen []time.Duration
		h := newTestHub(t, Config{DeliveryLatency: func(d time.Duration) {
			mu.Lock()
			defer mu.Unlock()
			seen = append(seen, d)
		}})
		sink := newFakeSink()
		c := h.Register(sink)

		sub, _ := c.Subscribe(parsePatterns("chat.>"), 0)
		sub.Start([]Event{{Topic: "chat.1", ID: 1, TS: testTS, Data: json.RawMessage(`1`), Published: time.Now().Add(-time.Hour)}})
		c.Send([]byte(`{"jsonrpc":"2.0","method":"other"}`))

		ev := durable("chat.1", 2)
		ev.Published = time.Now().Add(-3 * time.Second)
		h.Publish(ev)
		h.Publish(durable("chat.1", 3)) // no Published: left out
		synctest.Wait()

		if got := len(events(t, sink)); got != 3 {
			t.Fatalf("events written = %d, want 3", got)
		}
		mu.Lock()
		defer mu.Unlock()
		if len(seen) != 1 {
			t.Fatalf("DeliveryLatency calls = %v, want one, for the live event with Published", seen)
		}
		if seen[0] != 3*time.Second {
			t.Errorf("latency = %s, want 3s (the fake clock does not move while the write runs)", seen[0])
		}
	})
}

// ShutdownSpread closes every client within the window, not all at once,
// and returns once all have finished closing.
func TestShutdownSpreadsCloses(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := New(Config{})
		const n = 50
		sinks := make([]*fakeSink, n)
		clients := make([]*Client, n)
		for i := range sinks {
			sinks[i] = newFakeSink()
			clients[i] = h.Register(sinks[i])
		}

		start := time.Now()
		done := make(chan error, 1)
		go func() { done <- h.ShutdownSpread(context.Background(), 10*time.Second, 1012, "restarting") }()

		time.Sleep(5 * time.Second)
		synctest.Wait()
		closedEarly := 0
		for _, c := range clients {
			if isDone(c) {
				closedEarly++
			}
		}
		if closedEarly == 0 || closedEarly == n {
			t.Errorf("clients closed after half the window = %d of %d, want some but not all", closedEarly, n)
		}

		if err := <-done; err != nil {
			t.Fatalf("ShutdownSpread = %v, want nil", err)
		}
		if took := time.Since(start); took > 10*time.Second {
			t.Errorf("ShutdownSpread took %s, want at most the 10s window", took)
		}
		for i, sink := range sinks {
			if code, _, closeCalled, _ := sink.closed(); !closeCalled || code != 1012 {
				t.Errorf("client %d: Close called = %v with code %d, want 1012", i, closeCalled, code)
			}
		}
	})
}
