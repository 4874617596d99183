package hub

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pgsidecar/sidecar/topic"
)

var errConnClosed = errors.New("fake connection closed")

// fakeSink records what a client's writer sends. By default every Write
// succeeds at once. hold makes writes block until release, delay makes each
// write take a while (fake time under synctest), and failWrites makes them
// fail. Close ends blocked writes with an error, as a websocket does once
// the close handshake gives up on a peer that does not read.
type fakeSink struct {
	mu          sync.Mutex
	msgs        []string
	gate        chan struct{} // non-nil while writes are held
	delay       time.Duration
	writeErr    error
	closeCode   int
	closeReason string
	closeCalls  int
	nowCalls    int
	closeBlocks bool          // Close waits until CloseNow
	dead        chan struct{} // closed by the first Close or CloseNow
	deadOnce    sync.Once
	droppedNow  chan struct{} // closed by the first CloseNow
	nowOnce     sync.Once
}

func newFakeSink() *fakeSink {
	return &fakeSink{dead: make(chan struct{}), droppedNow: make(chan struct{})}
}

func (s *fakeSink) Write(ctx context.Context, msg []byte) error {
	s.mu.Lock()
	gate, delay, writeErr := s.gate, s.delay, s.writeErr
	s.mu.Unlock()

	if writeErr != nil {
		return writeErr
	}
	if delay > 0 {
		time.Sleep(delay)
	}
	if gate != nil {
		select {
		case <-gate:
		case <-s.dead:
			return errConnClosed
		case <-ctx.Done():
			return ctx.Err()
		}
	}

	s.mu.Lock()
	defer s.mu.Unlock()

	select {
	case <-s.dead:
		return errConnClosed
	default:
	}
	s.msgs = append(s.msgs, string(msg))
	return nil
}

func (s *fakeSink) Close(code int, reason string) error {
	s.mu.Lock()
	s.closeCalls++
	s.closeCode, s.closeReason = code, reason
	blocks := s.closeBlocks
	s.mu.Unlock()

	if blocks {
		<-s.droppedNow
	}
	s.deadOnce.Do(func() { close(s.dead) })
	return nil
}

func (s *fakeSink) CloseNow() error {
	s.mu.Lock()
	s.nowCalls++
	s.mu.Unlock()

	s.nowOnce.Do(func() { close(s.droppedNow) })
	s.deadOnce.Do(func() { close(s.dead) })
	return nil
}

// blockClose makes Close wait until CloseNow, like a peer that never
// completes the closing handshake.
func (s *fakeSink) blockClose() {
	s.mu.Lock()
	defer s.mu.Unlock()

	s.closeBlocks = true
}

// hold makes writes block until release.
func (s *fakeSink) hold() {
	s.mu.Lock()
	defer s.mu.Unlock()

	s.gate = make(chan struct{})
}

func (s *fakeSink) release() {
	s.mu.Lock()
	defer s.mu.Unlock()

	close(s.gate)
	s.gate = nil
}

func (s *fakeSink) setDelay(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()

	s.delay = d
}

func (s *fakeSink) failWrites(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()

	s.writeErr = err
}

func (s *fakeSink) messages() []string {
	s.mu.Lock()
	defer s.mu.Unlock()

	return append([]string(nil), s.msgs...)
}

// closed returns the code and reason of Close, and whether Close and
// CloseNow were called.
func (s *fakeSink) closed() (code int, reason string, closeCalled, nowCalled bool) {
	s.mu.Lock()
	defer s.mu.Unlock()

	return s.closeCode, s.closeReason, s.closeCalls > 0, s.nowCalls > 0
}

// received is one event notification as a client parsed it.
type received struct {
	Subscription string
	Topic        string
	ID           int64
	Data         string
}

func (r received) String() string {
	return fmt.Sprintf("%s %s #%d %s", r.Subscription, r.Topic, r.ID, r.Data)
}

// summarize returns one line per message: the event summary for event
// notifications, the raw text otherwise.
func summarize(t *testing.T, msgs []string) []string {
	t.Helper()

	out := make([]string, len(msgs))
	for i, m := range msgs {
		var n struct {
			Method string `json:"method"`
			Params *struct {
				Topic        string          `json:"topic"`
				Data         json.RawMessage `json:"data"`
				ID           int64           `json:"id"`
				TS           string          `json:"ts"`
				Subscription string          `json:"subscription"`
			} `json:"params"`
		}
		if err := json.Unmarshal([]byte(m), &n); err != nil {
			t.Fatalf("message %d is not JSON: %v: %s", i, err, m)
		}
		if n.Method != "event" || n.Params == nil {
			out[i] = m
			continue
		}
		var data bytes.Buffer
		if err := json.Compact(&data, n.Params.Data); err != nil {
			t.Fatalf("message %d has invalid data: %v: %s", i, err, m)
		}
		out[i] = received{n.Params.Subscription, n.Params.Topic, n.Params.ID, data.String()}.String()
	}
	return out
}

// events returns the summaries of the event notifications sent to sink.
func events(t *testing.T, sink *fakeSink) []string {
	t.Helper()

	var out []string
	for _, s := range summarize(t, sink.messages()) {
		if !strings.HasPrefix(s, "{") {
			out = append(out, s)
		}
	}
	return out
}

// newTestHub returns a hub that is shut down when the test ends.
func newTestHub(t *testing.T, cfg Config) *Hub {
	t.Helper()

	h := New(cfg)
	t.Cleanup(func() {
		if err := h.Shutdown(context.Background(), 1001, "test over"); err != nil {
			t.Errorf("Shutdown = %v, want nil", err)
		}
	})
	return h
}

// subscribe adds a started subscription without replay.
func subscribe(c *Client, after int64, patterns ...string) *Subscription {
	s, _ := c.Subscribe(parsePatterns(patterns...), after)
	s.Start(nil)
	return s
}

func parsePatterns(patterns ...string) []topic.Pattern {
	out := make([]topic.Pattern, len(patterns))
	for i, p := range patterns {
		out[i] = topic.MustParse(p)
	}
	return out
}

const testTS = "2026-12-04T10:00:00.123456Z"

func durable(topic string, id int64) Event {
	return Event{Topic: topic, ID: id, TS: testTS, Data: json.RawMessage(fmt.Sprintf(`{"n":%d}`, id))}
}

func ephemeral(topic, data string) Event {
	return Event{Topic: topic, TS: testTS, Data: json.RawMessage(data)}
}

// eventLine is the summary that events returns for a durable event.
func eventLine(sub, topic string, id int64) string {
	return received{sub, topic, id, fmt.Sprintf(`{"n":%d}`, id)}.String()
}

// checkClosedTooSlow checks that sink was closed with the closing
// handshake and CloseTooSlow.
func checkClosedTooSlow(t *testing.T, sink *fakeSink) {
	t.Helper()

	code, reason, closeCalled, nowCalled := sink.closed()
	if !closeCalled {
		t.Errorf("Sink.Close not called, want a close with %d", CloseTooSlow)
		return
	}
	if code != CloseTooSlow {
		t.Errorf("close code = %d, want %d", code, CloseTooSlow)
	}
	if reason != "client too slow" {
		t.Errorf("close reason = %q, want %q", reason, "client too slow")
	}
	if nowCalled {
		t.Error("CloseNow called, want only the closing handshake")
	}
}

func isDone(c *Client) bool {
	select {
	case <-c.Done():
		return true
	default:
		return false
	}
}
