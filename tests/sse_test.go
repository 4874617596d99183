package tests

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/pgsidecar/sidecar/server"
	"github.com/pgsidecar/sidecar/tests/pgtest"
)

// sseBlock is one block of an event stream: the fields up to a blank line.
// Comment lines are skipped.
type sseBlock struct {
	ID    string
	HasID bool
	Event string
	Data  string
}

// sseStream is an open GET /v1/events response whose blocks a goroutine
// reads into a channel, closed at the end of the stream.
type sseStream struct {
	resp   *http.Response
	blocks chan sseBlock
	cancel context.CancelFunc
}

// openSSE sends GET /v1/events with query and headers and returns the
// response, read in the background when its status is 200.
func openSSE(t testing.TB, sc *sidecar, query url.Values, header http.Header) *sseStream {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, sc.base+"/v1/events?"+query.Encode(), nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		t.Fatalf("GET /v1/events: %v", err)
	}

	st := &sseStream{resp: resp, blocks: make(chan sseBlock, 1024), cancel: cancel}
	t.Cleanup(st.close)
	if resp.StatusCode == http.StatusOK {
		go st.read()
	}
	return st
}

// openSSEToken opens a stream on topics with tok as a bearer token.
func openSSEToken(t testing.TB, sc *sidecar, tok string, topics ...string) *sseStream {
	t.Helper()
	st := openSSE(t, sc, url.Values{"topic": topics}, http.Header{"Authorization": {"Bearer " + tok}})
	if st.resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(st.resp.Body)
		t.Fatalf("GET /v1/events?topic=%v: status %d %s, want 200", topics, st.resp.StatusCode, body)
	}
	return st
}

func (st *sseStream) close() {
	st.cancel()
	st.resp.Body.Close()
}

func (st *sseStream) read() {
	defer close(st.blocks)
	r := bufio.NewReader(st.resp.Body)
	var b sseBlock
	started := false
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		line = strings.TrimSuffix(line, "\n")
		if line == "" {
			if started {
				st.blocks <- b
			}
			b, started = sseBlock{}, false
			continue
		}
		if strings.HasPrefix(line, ":") {
			continue
		}
		field, value, _ := strings.Cut(line, ":")
		value = strings.TrimPrefix(value, " ")
		started = true
		switch field {
		case "id":
			b.ID, b.HasID = value, true
		case "event":
			b.Event = value
		case "data":
			b.Data = value
		}
	}
}

// nextBlock returns the stream's next block, failing the test when the
// stream ends or none arrives within waitLong.
func (st *sseStream) nextBlock(t testing.TB) sseBlock {
	t.Helper()
	select {
	case b, ok := <-st.blocks:
		if !ok {
			t.Fatal("event stream ended while a block was expected")
		}
		return b
	case <-time.After(waitLong):
		t.Fatalf("no block on the event stream within %s", waitLong)
	}
	return sseBlock{}
}

// expectEnd fails the test unless the stream ends within waitLong with no
// further block.
func (st *sseStream) expectEnd(t testing.TB) {
	t.Helper()
	select {
	case b, ok := <-st.blocks:
		if ok {
			t.Fatalf("block %+v after the end was expected", b)
		}
	case <-time.After(waitLong):
		t.Fatalf("event stream still open after %s", waitLong)
	}
}

// resumePoint reads the stream's first block, the id line alone that is
// sent once the subscription is in place, and returns its id.
func (st *sseStream) resumePoint(t testing.TB) string {
	t.Helper()
	b := st.nextBlock(t)
	if !b.HasID || b.Data != "" || b.Event != "" {
		t.Fatalf("first block = %+v, want an id line alone", b)
	}
	return b.ID
}

// sseEvent is the data of an event block.
type sseEvent struct {
	Topic string          `json:"topic"`
	Data  json.RawMessage `json:"data"`
	ID    int64           `json:"id"`
	TS    string          `json:"ts"`
}

// nextEvent reads the next block and decodes it as an event.
func (st *sseStream) nextEvent(t testing.TB) (sseEvent, sseBlock) {
	t.Helper()
	b := st.nextBlock(t)
	if b.Event != "" {
		t.Fatalf("block = %+v, want an event of the default type", b)
	}
	var ev sseEvent
	if err := json.Unmarshal([]byte(b.Data), &ev); err != nil {
		t.Fatalf("event data %q: %v", b.Data, err)
	}
	return ev, b
}

// sseError is the data of an "event: error" block.
type sseError struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
}

func (st *sseStream) nextError(t testing.TB) sseError {
	t.Helper()
	b := st.nextBlock(t)
	if b.Event != "error" {
		t.Fatalf("block = %+v, want event: error", b)
	}
	var e sseError
	if err := json.Unmarshal([]byte(b.Data), &e); err != nil {
		t.Fatalf("error data %q: %v", b.Data, err)
	}
	return e
}

// publishEvent publishes one durable event through the HTTP API and returns
// its id.
func publishEvent(t testing.TB, sc *sidecar, topic string, data any) int64 {
	t.Helper()
	status, body := postJSON(t, sc, "/v1/publish", testAPIKey, map[string]any{"topic": topic, "data": data})
	if status != http.StatusOK {
		t.Fatalf("publish %s: status %d %v", topic, status, body)
	}
	id, _ := body["id"].(float64)
	return int64(id)
}

func TestSSEStreamReceivesEvents(t *testing.T) {
	sc := startSidecar(t, pgtest.NewDatabase(t))
	st := openSSEToken(t, sc, token(t, "reader", []string{"orders.>"}, nil), "orders.>")

	if got := st.resp.Header.Get("Content-Type"); got != "text/event-stream" {
		t.Errorf("Content-Type = %q, want text/event-stream", got)
	}
	if got := st.resp.Header.Get("Cache-Control"); got != "no-cache" {
		t.Errorf("Cache-Control = %q, want no-cache", got)
	}
	st.resumePoint(t)

	id := publishEvent(t, sc, "orders.1", map[string]any{"total": 12})
	ev, b := st.nextEvent(t)
	if ev.Topic != "orders.1" || string(ev.Data) != `{"total":12}` || ev.ID != id || ev.TS == "" {
		t.Fatalf("event = %+v, want orders.1 {\"total\":12} with id %d and a ts", ev, id)
	}
	if !strings.HasSuffix(b.ID, ":"+strconv.FormatInt(id, 10)) {
		t.Errorf("id line = %q, want it to end in :%d", b.ID, id)
	}

	t.Run("ephemeral event has no id line", func(t *testing.T) {
		status, body := postJSON(t, sc, "/v1/publish", testAPIKey, map[string]any{"topic": "orders.2", "data": "typing", "durable": false})
		if status != http.StatusOK {
			t.Fatalf("publish: status %d %v", status, body)
		}
		ev, b := st.nextEvent(t)
		if ev.Topic != "orders.2" || ev.ID != 0 || b.HasID {
			t.Fatalf("ephemeral event = %+v with block %+v, want orders.2 without id", ev, b)
		}
	})

	t.Run("JSON with line breaks stays on one data line", func(t *testing.T) {
		legacy := startSidecar(t, sc.dbURL, func(c *server.Config) { c.ListenChannels = []string{"legacy"} })
		st := openSSEToken(t, legacy, token(t, "reader", []string{"pg.>"}, nil), "pg.legacy")
		st.resumePoint(t)

		// A pg_notify payload reaches subscribers as it was sent.
		exec(t, connect(t, sc.dbURL), `SELECT pg_notify('legacy', E'{"a": [1,\n2]}')`)
		ev, _ := st.nextEvent(t)
		if ev.Topic != "pg.legacy" || string(ev.Data) != `{"a":[1,2]}` {
			t.Fatalf("event = %s %s, want pg.legacy {\"a\":[1,2]}", ev.Topic, ev.Data)
		}
	})
}

func TestSSEResumeWithLastEventID(t *testing.T) {
	sc := startSidecar(t, pgtest.NewDatabase(t))
	tok := token(t, "reader", []string{"orders.>"}, nil)

	first := openSSEToken(t, sc, tok, "orders.>")
	first.resumePoint(t)
	publishEvent(t, sc, "orders.1", 1)
	publishEvent(t, sc, "orders.2", 2)
	first.nextEvent(t)
	_, last := first.nextEvent(t)
	first.close()

	// Published while no stream is open.
	want := []int64{publishEvent(t, sc, "orders.3", 3), publishEvent(t, sc, "orders.4", 4)}

	resumed := openSSE(t, sc, url.Values{"topic": {"orders.>"}, "since": {"0"}},
		http.Header{"Authorization": {"Bearer " + tok}, "Last-Event-ID": {last.ID}})
	if resumed.resp.StatusCode != http.StatusOK {
		t.Fatalf("resume: status %d, want 200", resumed.resp.StatusCode)
	}
	if got := resumed.resumePoint(t); got != last.ID {
		t.Errorf("resume point = %q, want the Last-Event-ID %q", got, last.ID)
	}
	for _, id := range want {
		if ev, _ := resumed.nextEvent(t); ev.ID != id {
			t.Fatalf("replayed event id = %d (%s), want %d", ev.ID, ev.Topic, id)
		}
	}
	live := publishEvent(t, sc, "orders.5", 5)
	if ev, _ := resumed.nextEvent(t); ev.ID != live {
		t.Fatalf("live event id = %d (%s), want %d", ev.ID, ev.Topic, live)
	}

	t.Run("from the first resume point", func(t *testing.T) {
		// A client that disconnects before any event resumes from the id
		// line that opened its stream.
		st := openSSEToken(t, sc, tok, "orders.>")
		start := st.resumePoint(t)
		st.close()
		id := publishEvent(t, sc, "orders.6", 6)

		again := openSSE(t, sc, url.Values{"topic": {"orders.>"}},
			http.Header{"Authorization": {"Bearer " + tok}, "Last-Event-ID": {start}})
		again.resumePoint(t)
		if ev, _ := again.nextEvent(t); ev.ID != id {
			t.Fatalf("first event after resuming = %d (%s), want %d", ev.ID, ev.Topic, id)
		}
	})

	t.Run("since parameter", func(t *testing.T) {
		st := openSSE(t, sc, url.Values{"topic": {"orders.>"}, "since": {strconv.FormatInt(want[1], 10)}},
			http.Header{"Authorization": {"Bearer " + tok}})
		st.resumePoint(t)
		if ev, _ := st.nextEvent(t); ev.ID != live {
			t.Fatalf("first event after since=%d: id %d, want %d", want[1], ev.ID, live)
		}
	})
}

func TestSSERejectsBeforeStream(t *testing.T) {
	sc := startSidecar(t, pgtest.NewDatabase(t))
	orders := token(t, "reader", []string{"orders.*"}, nil)

	cases := []struct {
		name   string
		query  url.Values
		header http.Header
		status int
		code   string
	}{
		{"no token", url.Values{"topic": {"orders.1"}}, nil, http.StatusUnauthorized, "missing_token"},
		{"invalid token", url.Values{"topic": {"orders.1"}}, http.Header{"Authorization": {"Bearer not-a-token"}}, http.StatusUnauthorized, "invalid_token"},
		{"invalid token in query", url.Values{"topic": {"orders.1"}, "access_token": {"not-a-token"}}, nil, http.StatusUnauthorized, "invalid_token"},
		{"pattern outside claims", url.Values{"topic": {"users.*"}}, http.Header{"Authorization": {"Bearer " + orders}}, http.StatusForbidden, "forbidden"},
		{"wider pattern", url.Values{"topic": {">"}}, http.Header{"Authorization": {"Bearer " + orders}}, http.StatusForbidden, "forbidden"},
		{"one pattern not allowed", url.Values{"topic": {"orders.*", "users.1"}}, http.Header{"Authorization": {"Bearer " + orders}}, http.StatusForbidden, "forbidden"},
		{"invalid pattern", url.Values{"topic": {"orders..1"}}, http.Header{"Authorization": {"Bearer " + orders}}, http.StatusBadRequest, "invalid_topic"},
		{"no topic", url.Values{}, http.Header{"Authorization": {"Bearer " + orders}}, http.StatusBadRequest, "invalid_topic"},
		{"negative since", url.Values{"topic": {"orders.*"}, "since": {"-1"}}, http.Header{"Authorization": {"Bearer " + orders}}, http.StatusBadRequest, "invalid_since"},
		{"malformed Last-Event-ID", url.Values{"topic": {"orders.*"}}, http.Header{"Authorization": {"Bearer " + orders}, "Last-Event-ID": {"42"}}, http.StatusBadRequest, "invalid_last_event_id"},
		{"foreign origin", url.Values{"topic": {"orders.*"}}, http.Header{"Authorization": {"Bearer " + orders}, "Origin": {"https://evil.example"}}, http.StatusForbidden, "origin_not_allowed"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			st := openSSE(t, sc, tc.query, tc.header)
			body, _ := io.ReadAll(st.resp.Body)
			if st.resp.StatusCode != tc.status {
				t.Fatalf("status = %d %s, want %d", st.resp.StatusCode, body, tc.status)
			}
			var got struct {
				Error struct{ Code, Message string } `json:"error"`
			}
			if err := json.Unmarshal(body, &got); err != nil {
				t.Fatalf("body %s is not the API's JSON error: %v", body, err)
			}
			if got.Error.Code != tc.code || got.Error.Message == "" {
				t.Fatalf("error = %+v, want code %s with a message", got.Error, tc.code)
			}
		})
	}
}

func TestSSEAnonymousAccess(t *testing.T) {
	sc := startSidecar(t, pgtest.NewDatabase(t), func(c *server.Config) { c.AnonymousSubscribe = []string{"public.>"} })

	st := openSSE(t, sc, url.Values{"topic": {"public.news"}}, nil)
	if st.resp.StatusCode != http.StatusOK {
		t.Fatalf("anonymous stream on public.news: status %d, want 200", st.resp.StatusCode)
	}
	st.resumePoint(t)
	id := publishEvent(t, sc, "public.news", "hello")
	if ev, _ := st.nextEvent(t); ev.ID != id {
		t.Fatalf("anonymous event id = %d, want %d", ev.ID, id)
	}

	if st := openSSE(t, sc, url.Values{"topic": {"private.x"}}, nil); st.resp.StatusCode != http.StatusForbidden {
		t.Errorf("anonymous stream on private.x: status %d, want 403", st.resp.StatusCode)
	}
	invalid := openSSE(t, sc, url.Values{"topic": {"public.news"}}, http.Header{"Authorization": {"Bearer not-a-token"}})
	if invalid.resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("invalid token with anonymous access on: status %d, want 401", invalid.resp.StatusCode)
	}
}

func TestSSEDeliversOnlyAllowedTopics(t *testing.T) {
	sc := startSidecar(t, pgtest.NewDatabase(t))
	st := openSSEToken(t, sc, token(t, "reader", []string{"orders.*"}, nil), "orders.*")
	st.resumePoint(t)

	publishEvent(t, sc, "users.1", "secret")
	publishEvent(t, sc, "orders.1.lines", "not matched by orders.*")
	want := publishEvent(t, sc, "orders.1", "visible")

	// Events reach the stream in publish order, so users.1 would come
	// before orders.1.
	if ev, _ := st.nextEvent(t); ev.ID != want || ev.Topic != "orders.1" {
		t.Fatalf("first event = %d %s, want %d orders.1", ev.ID, ev.Topic, want)
	}
}

func TestSSEHistoryExpired(t *testing.T) {
	sc := startSidecar(t, pgtest.NewDatabase(t))
	tok := token(t, "reader", []string{"orders.>"}, nil)
	_, ready := sc.readyz(t)
	epoch, _ := ready["epoch"].(string)
	publishEvent(t, sc, "orders.1", 1)

	cases := []struct {
		name   string
		lastID string
	}{
		{"above the newest id", epoch + ":999999"},
		{"other epoch", "0123456789abcdef:1"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			st := openSSE(t, sc, url.Values{"topic": {"orders.>"}},
				http.Header{"Authorization": {"Bearer " + tok}, "Last-Event-ID": {tc.lastID}})
			if st.resp.StatusCode != http.StatusOK {
				t.Fatalf("status = %d, want 200 with an error event", st.resp.StatusCode)
			}
			e := st.nextError(t)
			if e.Code != -32006 || !strings.Contains(e.Message, "history expired") {
				t.Fatalf("error = %+v, want -32006 history expired", e)
			}
			st.expectEnd(t)
		})
	}
}

func TestSSEEndsOnDrain(t *testing.T) {
	sc := startSidecar(t, pgtest.NewDatabase(t))
	st := openSSEToken(t, sc, token(t, "reader", []string{"orders.>"}, nil), "orders.>")
	st.resumePoint(t)

	stopped := make(chan struct{})
	go func() {
		sc.stop()
		close(stopped)
	}()

	if e := st.nextError(t); e.Code != 1012 {
		t.Fatalf("error on drain = %+v, want code 1012", e)
	}
	st.expectEnd(t)
	select {
	case <-stopped:
	case <-time.After(waitLong):
		t.Fatalf("sidecar still draining after %s", waitLong)
	}
}

func TestSSEEndsWhenTokenExpires(t *testing.T) {
	sc := startSidecar(t, pgtest.NewDatabase(t))

	// The token expired 25 s ago, within the 30 s clock skew that the
	// sidecar allows, so it is accepted and the stream ends about 5 s
	// later.
	claims := jwt.MapClaims{
		"sub":      "reader",
		"exp":      time.Now().Add(-25 * time.Second).Unix(),
		"realtime": map[string]any{"subscribe": []string{"orders.>"}},
	}
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString([]byte(testSecret))
	if err != nil {
		t.Fatal(err)
	}
	st := openSSEToken(t, sc, tok, "orders.>")
	st.resumePoint(t)

	if e := st.nextError(t); e.Code != 1008 {
		t.Fatalf("error on token expiry = %+v, want code 1008", e)
	}
	st.expectEnd(t)
}
