package tests

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/pgsidecar/sidecar/auth"
	"github.com/pgsidecar/sidecar/fastapiws"
	"github.com/pgsidecar/sidecar/server"
	"github.com/pgsidecar/sidecar/tests/pgtest"
)

// pyClient speaks the fastapi_websocket_rpc protocol frame by frame, as
// their Python client does.
type pyClient struct {
	t    *testing.T
	conn *websocket.Conn
	// early holds responses read while waiting for another one, because
	// the sidecar responds to concurrent requests in any order.
	early map[string]frame
}

// frame is one decoded message from the sidecar.
type frame struct {
	Request *struct {
		Method    string          `json:"method"`
		Arguments json.RawMessage `json:"arguments"`
		CallID    *string         `json:"call_id"`
	} `json:"request"`
	Response *struct {
		Result     json.RawMessage  `json:"result"`
		ResultType *string          `json:"result_type"`
		CallID     *string          `json:"call_id"`
		Error      *fastapiws.Error `json:"error"`
	} `json:"response"`
	raw    string
	binary bool
}

func dialPy(t *testing.T, sc *sidecar, path, tok string) *pyClient {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	h := http.Header{}
	if tok != "" {
		h.Set("Authorization", "Bearer "+tok)
	}
	conn, _, err := websocket.Dial(ctx, strings.Replace(sc.base, "http", "ws", 1)+path, &websocket.DialOptions{HTTPHeader: h})
	if err != nil {
		t.Fatalf("dial %s: %v", path, err)
	}
	conn.SetReadLimit(4 << 20)
	t.Cleanup(func() { conn.CloseNow() })
	return &pyClient{t: t, conn: conn, early: map[string]frame{}}
}

func (c *pyClient) send(msg string) { c.sendAs(websocket.MessageText, msg) }

func (c *pyClient) sendAs(typ websocket.MessageType, msg string) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	if err := c.conn.Write(ctx, typ, []byte(msg)); err != nil {
		c.t.Fatalf("write %s: %v", msg, err)
	}
}

func (c *pyClient) call(method, args, callID string) {
	c.send(fmt.Sprintf(`{"request": {"method": %q, "arguments": %s, "call_id": %q}, "response": null}`, method, args, callID))
}

// next reads the next frame, failing after waitLong.
func (c *pyClient) next() frame {
	c.t.Helper()
	f, ok := c.nextWithin(waitLong)
	if !ok {
		c.t.Fatal("no message from the sidecar")
	}
	return f
}

func (c *pyClient) nextWithin(d time.Duration) (frame, bool) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	typ, b, err := c.conn.Read(ctx)
	if err != nil {
		return frame{}, false
	}
	var f frame
	if err := json.Unmarshal(b, &f); err != nil {
		c.t.Fatalf("message %s: %v", b, err)
	}
	f.raw, f.binary = string(b), typ == websocket.MessageBinary
	return f, true
}

// response reads frames until the response to callID, acknowledging and
// collecting the notify requests on the way.
func (c *pyClient) response(callID string, notifies *[]frame) frame {
	c.t.Helper()
	if f, ok := c.early[callID]; ok {
		delete(c.early, callID)
		checkStrictResponse(c.t, f)
		return f
	}
	for {
		f := c.next()
		if f.Request != nil && f.Request.Method == "notify" {
			c.ack(f)
			if notifies != nil {
				*notifies = append(*notifies, f)
			}
			continue
		}
		if f.Response != nil && f.Response.CallID != nil {
			if *f.Response.CallID == callID {
				checkStrictResponse(c.t, f)
				return f
			}
			c.early[*f.Response.CallID] = f
		}
	}
}

// ack acknowledges a notify as their client does.
func (c *pyClient) ack(f frame) {
	c.send(fmt.Sprintf(`{"request": null, "response": {"result": "None", "result_type": "str", "call_id": %q}}`, *f.Request.CallID))
}

// nextNotify returns the next notify request.
func (c *pyClient) nextNotify() frame {
	c.t.Helper()
	for {
		f := c.next()
		if f.Request != nil && f.Request.Method == "notify" {
			return f
		}
	}
}

// checkStrictResponse checks what pydantic v2 clients require of a
// response: result and result_type present, and a string call_id.
func checkStrictResponse(t *testing.T, f frame) {
	t.Helper()
	var keys map[string]map[string]json.RawMessage
	if err := json.Unmarshal([]byte(f.raw), &keys); err != nil {
		t.Fatalf("response %s: %v", f.raw, err)
	}
	for _, k := range []string{"result", "result_type", "call_id"} {
		if _, ok := keys["response"][k]; !ok {
			t.Errorf("response %s has no %q member", f.raw, k)
		}
	}
	if f.Response.CallID == nil {
		t.Errorf("response %s: call_id is not a string", f.raw)
	}
}

type notifyArgs struct {
	Subscription struct {
		ID           string  `json:"id"`
		SubscriberID string  `json:"subscriber_id"`
		Topic        string  `json:"topic"`
		NotifierID   *string `json:"notifier_id"`
	} `json:"subscription"`
	Data json.RawMessage `json:"data"`
}

func notifyOf(t *testing.T, f frame) notifyArgs {
	t.Helper()
	var a notifyArgs
	if err := json.Unmarshal(f.Request.Arguments, &a); err != nil {
		t.Fatalf("notify arguments %s: %v", f.Request.Arguments, err)
	}
	return a
}

func pyToken(t *testing.T, sub string) string {
	return token(t, sub, []string{">"}, []string{">"})
}

// The exchange of their protocol, step by step: readiness ping, channel
// id, subscribe, publish with and without a foreign notifier_id, one
// notify per matching subscription, unsubscribe, and errors in band.
func TestFastAPIPubSubExchange(t *testing.T) {
	db := pgtest.NewDatabase(t)
	sc := startSidecar(t, db)
	c := dialPy(t, sc, "/pubsub", pyToken(t, "py-c"))
	d := dialPy(t, sc, "/pubsub", pyToken(t, "py-d"))

	// 1. Readiness ping.
	c.call("_ping_", "{}", "p1")
	if f := c.response("p1", nil); string(f.Response.Result) != `"pong"` || *f.Response.ResultType != "str" {
		t.Errorf("_ping_ = %s, want result \"pong\" of type str", f.raw)
	}

	// The channel id is the client id of the HTTP API.
	c.call("_get_channel_id_", "{}", "g1")
	var channel string
	if err := json.Unmarshal(c.response("g1", nil).Response.Result, &channel); err != nil || channel == "" {
		t.Fatalf("_get_channel_id_ returned no string: %v", err)
	}

	// 2. Subscribe a topic and all topics in one call.
	c.call("subscribe", `{"topics": ["a", "__EventNotifier_ALL_TOPICS__"]}`, "s1")
	if f := c.response("s1", nil); string(f.Response.Result) != "true" || *f.Response.ResultType != "bool" {
		t.Fatalf("subscribe = %s, want true of type bool", f.raw)
	}
	d.call("subscribe", `{"topics": ["a"]}`, "s1")
	if f := d.response("s1", nil); string(f.Response.Result) != "true" {
		t.Fatalf("subscribe of the second client = %s, want true", f.raw)
	}

	// 3. Publish with a foreign notifier_id: the publisher gets it too,
	// one notify per matching subscription.
	var notifies []frame
	c.call("publish", `{"topics": ["a", "b"], "data": {"n": 1}, "sync": false, "notifier_id": "someone-else"}`, "u1")
	if f := c.response("u1", &notifies); string(f.Response.Result) != "true" {
		t.Fatalf("publish = %s, want true", f.raw)
	}
	for len(notifies) < 3 {
		f := c.nextNotify()
		c.ack(f)
		notifies = append(notifies, f)
	}
	topics := map[string]int{}
	for _, f := range notifies {
		a := notifyOf(t, f)
		topics[a.Subscription.Topic]++
		if !sameJSON(a.Data, `{"n":1}`) {
			t.Errorf("notify data = %s, want {\"n\":1}", a.Data)
		}
		if a.Subscription.SubscriberID != channel || a.Subscription.NotifierID != nil || a.Subscription.ID == "" {
			t.Errorf("notify subscription = %+v, want subscriber_id %s, an id and a null notifier_id", a.Subscription, channel)
		}
		if f.Request.CallID == nil || *f.Request.CallID == "" {
			t.Errorf("notify %s has no call_id", f.raw)
		}
	}
	if topics["a"] != 2 || topics["b"] != 1 {
		t.Errorf("notifies by topic = %v, want a twice (a and all topics) and b once", topics)
	}
	if a := notifyOf(t, d.nextNotify()); a.Subscription.Topic != "a" {
		t.Errorf("second client's notify topic = %q, want a", a.Subscription.Topic)
	}

	// Without notifier_id the publisher does not receive its own event;
	// the other subscriber does. A marker published with a foreign id
	// comes next for the publisher.
	c.call("publish", `{"topics": ["a"], "data": "own"}`, "u2")
	c.response("u2", &notifies)
	if a := notifyOf(t, d.nextNotify()); string(a.Data) != `"own"` {
		t.Errorf("second client got %s, want the publisher's \"own\"", a.Data)
	}
	c.call("publish", `{"topics": ["b"], "data": "marker", "notifier_id": "x"}`, "u3")
	var after []frame
	c.response("u3", &after)
	for len(after) < 1 {
		after = append(after, c.nextNotify())
	}
	if a := notifyOf(t, after[0]); string(a.Data) != `"marker"` {
		t.Errorf("publisher's next notify = %s, want the marker: it must not receive its own event", a.Data)
	}

	// 7. Unsubscribe: only the all-topics subscription is left.
	c.call("unsubscribe", `{"topics": ["a"]}`, "x1")
	if f := c.response("x1", nil); string(f.Response.Result) != "true" {
		t.Errorf("unsubscribe = %s, want true", f.raw)
	}
	c.call("publish", `{"topics": ["a"], "data": 2, "notifier_id": "x"}`, "u4")
	c.call("publish", `{"topics": ["b"], "data": "end", "notifier_id": "x"}`, "u5")
	var last []frame
	c.response("u4", &last)
	c.response("u5", &last)
	for len(last) < 2 {
		last = append(last, c.nextNotify())
	}
	if a := notifyOf(t, last[1]); string(a.Data) != `"end"` {
		t.Errorf("after unsubscribing from a, the notifies were %s and %s, want one for a (all topics), then the end marker", last[0].raw, last[1].raw)
	}

	// Errors come in band and the connection stays open.
	c.call("subscribe", `{"topics": ["not a topic!"]}`, "e1")
	if f := c.response("e1", nil); string(f.Response.Result) != "false" || f.Response.Error == nil {
		t.Errorf("subscribe to an invalid topic = %s, want false with an error member", f.raw)
	}
	c.call("no_such_method", `{}`, "e2")
	if f := c.response("e2", nil); f.Response.Error == nil || f.Response.Error.Code != -32601 {
		t.Errorf("unknown method = %s, want an error member with -32601", f.raw)
	}
	c.send(`not json`)
	c.send(`{"request": {"arguments": {}}}`)

	// A request without call_id is answered with a string call_id; a
	// binary request is answered in a binary frame.
	c.send(`{"request": {"method": "ping"}}`)
	if f := c.response("", nil); string(f.Response.Result) != `"pong"` {
		t.Errorf("ping without call_id = %s, want pong", f.raw)
	}
	c.sendAs(websocket.MessageBinary, `{"request": {"method": "_ping_", "arguments": {}, "call_id": "b1"}, "response": null}`)
	if f := c.response("b1", nil); !f.binary {
		t.Errorf("a binary request was answered in a text frame")
	}
}

// A client that publishes with sync to a topic it subscribes to gets its
// answer and its notify, and keeps being served (their server deadlocks).
func TestFastAPISyncPublishToOwnTopic(t *testing.T) {
	db := pgtest.NewDatabase(t)
	sc := startSidecar(t, db)
	c := dialPy(t, sc, "/pubsub", pyToken(t, "py-loop"))

	c.call("subscribe", `{"topics": ["loop"]}`, "s1")
	c.response("s1", nil)

	var notifies []frame
	c.call("publish", `{"topics": ["loop"], "data": 1, "sync": true, "notifier_id": "elsewhere"}`, "u1")
	if f := c.response("u1", &notifies); string(f.Response.Result) != "true" {
		t.Fatalf("sync publish = %s, want true", f.raw)
	}
	if len(notifies) == 0 {
		c.ack(c.nextNotify())
	}
	c.call("_ping_", "{}", "p1")
	c.response("p1", nil)
}

// A subscriber that never answers notify, and one that stops reading, do
// not delay delivery to the others.
func TestFastAPISilentClientDoesNotDelayOthers(t *testing.T) {
	db := pgtest.NewDatabase(t)
	sc := startSidecar(t, db)
	silent := dialPy(t, sc, "/pubsub", pyToken(t, "py-silent"))
	stuck := dialPy(t, sc, "/pubsub", pyToken(t, "py-stuck"))
	fast := dialPy(t, sc, "/pubsub", pyToken(t, "py-fast"))
	for _, c := range []*pyClient{silent, stuck, fast} {
		c.call("subscribe", `{"topics": ["hot"]}`, "s1")
		c.response("s1", nil)
	}

	pg := connect(t, db)
	const n = 50
	for i := range n {
		exec(t, pg, `SELECT realtime.publish('hot', $1::jsonb)`, fmt.Sprint(i))
	}

	// silent reads but never answers; stuck reads nothing at all.
	go func() {
		for {
			if _, ok := silent.nextWithin(waitLong); !ok {
				return
			}
		}
	}()
	for i := range n {
		a := notifyOf(t, fast.nextNotify())
		if string(a.Data) != fmt.Sprint(i) {
			t.Fatalf("notify %d carries %s, want %d", i, a.Data, i)
		}
	}
}

// /ws speaks their RPC protocol: a client's call goes to the application
// as app.<name>, and the application calls the client through the HTTP API
// by the id that _get_channel_id_ returns, never by the id in the path.
func TestFastAPIRPCBothWays(t *testing.T) {
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			ID     json.RawMessage `json:"id"`
			Method string          `json:"method"`
			Params json.RawMessage `json:"params"`
		}
		body, _ := io.ReadAll(r.Body)
		_ = json.Unmarshal(body, &req)
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"jsonrpc":"2.0","id":%s,"result":{"method":%q,"params":%s}}`, req.ID, req.Method, req.Params)
	}))
	t.Cleanup(app.Close)
	db := pgtest.NewDatabase(t)
	sc := startSidecar(t, db, func(c *server.Config) { c.AppRPCURL = app.URL })

	tok, err := auth.Sign([]byte(testSecret), "py-rpc", auth.Realtime{Call: []string{"app.echo"}}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	c := dialPy(t, sc, "/ws/chosen-by-client", tok)

	c.call("echo", `{"text": "hi"}`, "e1")
	f := c.response("e1", nil)
	var echoed struct {
		Method string            `json:"method"`
		Params map[string]string `json:"params"`
	}
	_ = json.Unmarshal(f.Response.Result, &echoed)
	if echoed.Method != "echo" || echoed.Params["text"] != "hi" || *f.Response.ResultType != "dict" {
		t.Errorf("echo = %s, want the application's result with result_type dict", f.raw)
	}
	c.call("forbidden_method", `{}`, "e2")
	if f := c.response("e2", nil); f.Response.Error == nil || f.Response.Error.Code != -32003 {
		t.Errorf("a method the token does not allow = %s, want -32003 in band", f.raw)
	}

	c.call("_get_channel_id_", "{}", "g1")
	var channel string
	_ = json.Unmarshal(c.response("g1", nil).Response.Result, &channel)

	// The id in the path routes nothing.
	if code, _ := postJSON(t, sc, "/v1/clients/chosen-by-client/call", testAPIKey, map[string]any{"method": "greet", "params": map[string]any{}}); code != http.StatusNotFound {
		t.Errorf("a call by the path's id = %d, want 404", code)
	}

	type result struct {
		code int
		body map[string]any
	}
	done := make(chan result, 1)
	go func() {
		code, body := postJSON(t, sc, "/v1/clients/"+channel+"/call", testAPIKey, map[string]any{"method": "greet", "params": map[string]any{"name": "py"}})
		done <- result{code, body}
	}()
	req := c.next()
	if req.Request == nil || req.Request.Method != "greet" || string(req.Request.Arguments) != `{"name":"py"}` || req.Request.CallID == nil {
		t.Fatalf("the application's call arrived as %s, want greet with keyword arguments and a call_id", req.raw)
	}
	c.send(fmt.Sprintf(`{"request": null, "response": {"result": "hello py", "result_type": "str", "call_id": %q}}`, *req.Request.CallID))
	r := <-done
	if r.code != http.StatusOK || r.body["result"] != "hello py" {
		t.Errorf("POST /v1/clients/{id}/call = %d %v, want 200 with the client's result", r.code, r.body)
	}
}

// A connection without a token is refused before the upgrade when the
// sidecar allows no anonymous access, as their clients expect (they stop
// retrying on 401 and 403).
func TestFastAPIRefusesMissingToken(t *testing.T) {
	db := pgtest.NewDatabase(t)
	sc := startSidecar(t, db)
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	_, resp, err := websocket.Dial(ctx, strings.Replace(sc.base, "http", "ws", 1)+"/pubsub", nil)
	if err == nil || resp == nil || resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("dial /pubsub without a token: err %v, response %v, want 401", err, resp)
	}
}

// A publish too large for their clients is refused in band, and an event
// from another source that is too large for them is not sent, and counted.
func TestFastAPIRefusesWhatTheirClientCannotTake(t *testing.T) {
	db := pgtest.NewDatabase(t)
	sc := startSidecar(t, db)
	c := dialPy(t, sc, "/pubsub", pyToken(t, "py-big"))
	c.call("subscribe", `{"topics": ["big"]}`, "s1")
	c.response("s1", nil)

	big := strings.Repeat("x", 1_050_000)
	c.call("publish", `{"topics": ["big"], "data": "`+big+`", "notifier_id": "x"}`, "u1")
	if f := c.response("u1", nil); string(f.Response.Result) != "false" || f.Response.Error == nil {
		t.Errorf("publish of %d bytes = %.200s, want false with an error member", len(big), f.raw)
	}

	// Characters that JSON encoders escape travel as they are, so data
	// under the limit is delivered.
	angles := strings.Repeat("<&>", 300_000)
	c.call("publish", `{"topics": ["big"], "data": "`+angles+`", "notifier_id": "x"}`, "u2")
	var got []frame
	if f := c.response("u2", &got); string(f.Response.Result) != "true" {
		t.Fatalf("publish of %d bytes of <&> = %.200s, want true", len(angles), f.raw)
	}
	for len(got) < 1 {
		got = append(got, c.nextNotify())
	}
	if a := notifyOf(t, got[0]); len(a.Data) != len(angles)+2 {
		t.Errorf("notify data is %d bytes, want the %d published", len(a.Data), len(angles)+2)
	}

	pg := connect(t, db)
	exec(t, pg, `SELECT realtime.publish('big', to_jsonb(repeat('y', 1048400)))`)
	exec(t, pg, `SELECT realtime.publish('big', '"after"')`)
	if a := notifyOf(t, c.nextNotify()); string(a.Data) != `"after"` {
		t.Errorf("first notify = %.100s, want the small event: the large one does not fit their client", a.Data)
	}
	waitFor(t, "the large event to be counted", func() bool {
		return scrape(t, sc.base+"/metrics", "")[`sidecar_refused_total{reason="too_large_for_client"}`] >= 1
	})
}

// sameJSON reports whether raw and want are the same JSON value.
func sameJSON(raw json.RawMessage, want string) bool {
	var a, b any
	if json.Unmarshal(raw, &a) != nil || json.Unmarshal([]byte(want), &b) != nil {
		return false
	}
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return string(ja) == string(jb)
}
