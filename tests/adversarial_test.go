package tests

import (
	"bytes"
	"context"
	"encoding/json"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/coder/websocket"

	"github.com/pgsidecar/sidecar/server"
	"github.com/pgsidecar/sidecar/tests/pgtest"
)

// adversarialMaxEventBytes is large enough that the read limit (this plus
// 64 KiB) admits a 100,000-deep document and a 100,000-pattern subscribe,
// so those rows reach the JSON-RPC checks instead of the frame limit.
const adversarialMaxEventBytes = 512 << 10

// adversarialReply is one message from the sidecar with its id kept as
// sent, so ids such as 1e400 that do not fit a float64 can be compared.
type adversarialReply struct {
	ID     json.RawMessage `json:"id"`
	Method string          `json:"method"`
	Result json.RawMessage `json:"result"`
	Error  *struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

// readReply returns the next message that is not a heartbeat.
func (rc *rawConn) readReply() adversarialReply {
	rc.t.Helper()
	for {
		ctx, cancel := context.WithTimeout(context.Background(), waitLong)
		_, b, err := rc.conn.Read(ctx)
		cancel()
		if err != nil {
			rc.t.Fatalf("read: %v", err)
		}
		var r adversarialReply
		if err := json.Unmarshal(b, &r); err != nil {
			rc.t.Fatalf("message from the sidecar is not JSON (%v): %.300s", err, b)
		}
		if r.Method != "heartbeat" {
			return r
		}
	}
}

// adversarialCase is one frame and the exact reaction it must get.
type adversarialCase struct {
	name  string
	frame string

	// codes lists the accepted error codes. Empty means a successful result.
	codes []int
	// id is the expected reply id as raw JSON, and "" leaves it unchecked.
	id string
	// result is the expected raw result of a success, and "" accepts any.
	result string
	// notification means no reply: a ping sent right after gets the next
	// message, and it must be the pong.
	notification bool
	// published lists the raw data of events the frame itself publishes
	// on the control topic, which the control client receives first.
	published []string

	// closeType and closeCode, when set, send the frame with this message
	// type on a connection of its own, which must close with closeCode.
	closeType websocket.MessageType
	closeCode websocket.StatusCode
}

func TestAdversarialFrames(t *testing.T) {
	db := pgtest.NewDatabase(t)
	sc := startSidecar(t, db, func(c *server.Config) { c.MaxEventBytes = adversarialMaxEventBytes })
	tok := token(t, "u", []string{">"}, []string{"ok.>", "control"})
	control := subscribe(t, dialToken(t, sc, token(t, "watcher", []string{"control"}, nil)), []string{"control"})
	sql := connect(t, db)
	rc := dialRaw(t, sc, authHeader(tok))

	req := func(id, method, params string) string {
		return `{"jsonrpc": "2.0", "id": ` + id + `, "method": "` + method + `", "params": ` + params + `}`
	}
	deep := `{"jsonrpc": "2.0", "id": 1, "method": "ping", "params": ` +
		strings.Repeat("[", 100_000) + strings.Repeat("]", 100_000) + `}`
	manyTopics := `{"jsonrpc": "2.0", "id": "many", "method": "subscribe", "params": {"topics": [` +
		strings.TrimSuffix(strings.Repeat(`"a",`, 100_000), ",") + `]}}`
	readLimit := adversarialMaxEventBytes + 64<<10
	sqlText := `'); DROP TABLE realtime.events; -- $1 \\x00 /* */`
	sqlData, _ := json.Marshal(sqlText)

	cases := []adversarialCase{
		{name: "garbage text", frame: `hello, sidecar`, codes: []int{-32700}, id: "null"},
		{name: "empty frame", frame: ``, codes: []int{-32700}, id: "null"},
		{name: "batch", frame: `[` + req("1", "ping", "null") + `, ` + req("2", "ping", "null") + `]`, codes: []int{-32600}, id: "null"},
		{name: "empty array", frame: `[]`, codes: []int{-32600}, id: "null"},
		{name: "missing jsonrpc", frame: `{"id": 3, "method": "ping"}`, codes: []int{-32600}, id: "3"},
		{name: "jsonrpc 1.0", frame: `{"jsonrpc": "1.0", "id": 4, "method": "ping"}`, codes: []int{-32600}, id: "4"},
		{name: "ping notification", frame: `{"jsonrpc": "2.0", "method": "ping"}`, notification: true},
		{name: "unknown method notification", frame: `{"jsonrpc": "2.0", "method": "nope"}`, notification: true},
		{name: "publish notification", frame: `{"jsonrpc": "2.0", "method": "publish", "params": {"topic": "control", "data": "from a notification"}}`, notification: true, published: []string{`"from a notification"`}},

		{name: "string id", frame: req(`"abc"`, "ping", "null"), id: `"abc"`, result: `"pong"`},
		{name: "escaped string id", frame: req(`"a\"b\u00e9"`, "ping", "null"), id: `"a\"b\u00e9"`, result: `"pong"`},
		{name: "integer id", frame: req("7", "ping", "null"), id: "7", result: `"pong"`},
		{name: "negative id", frame: req("-7", "ping", "null"), id: "-7", result: `"pong"`},
		{name: "float id", frame: req("1.5", "ping", "null"), id: "1.5", result: `"pong"`},
		{name: "null id", frame: req("null", "ping", "null"), id: "null", result: `"pong"`},
		{name: "object id", frame: req(`{"a": 1}`, "ping", "null"), codes: []int{-32600}, id: "null"},
		{name: "array id", frame: req(`[1]`, "ping", "null"), codes: []int{-32600}, id: "null"},
		{name: "true id", frame: req("true", "ping", "null"), codes: []int{-32600}, id: "null"},
		{name: "false id", frame: req("false", "ping", "null"), codes: []int{-32600}, id: "null"},

		{name: "100,000-deep params", frame: deep, codes: []int{-32700, -32600, -32602}},
		{name: "100,000-deep top level", frame: strings.Repeat("[", 100_000) + strings.Repeat("]", 100_000), codes: []int{-32700, -32600}, id: "null"},
		{name: "1e400 id", frame: req("1e400", "ping", "null"), id: "1e400", result: `"pong"`},
		{name: "integer id beyond 64 bits", frame: req("123456789012345678901234567890", "ping", "null"), id: "123456789012345678901234567890", result: `"pong"`},
		{name: "1e400 since", frame: req("8", "subscribe", `{"topics": ["ok.a"], "since": 1e400}`), codes: []int{-32602}, id: "8"},
		{name: "since beyond 64 bits", frame: req("9", "subscribe", `{"topics": ["ok.a"], "since": 99999999999999999999}`), codes: []int{-32602}, id: "9"},
		{name: "fractional since", frame: req("10", "subscribe", `{"topics": ["ok.a"], "since": 1.5}`), codes: []int{-32602}, id: "10"},

		{name: "duplicate id and method", frame: `{"jsonrpc": "2.0", "id": "first", "method": "nope", "id": "last", "method": "ping"}`, id: `"last"`, result: `"pong"`},
		{name: "duplicate topics", frame: req("11", "subscribe", `{"topics": ["ok.a"], "topics": ["ok\u0000a"]}`), codes: []int{-32602}, id: "11"},

		{name: "NUL in a pattern", frame: req("12", "subscribe", `{"topics": ["ok.a\u0000b"]}`), codes: []int{-32602}, id: "12"},
		{name: "NUL in a published topic", frame: req("13", "publish", `{"topic": "ok.a\u0000", "data": 1}`), codes: []int{-32602}, id: "13"},
		{name: "bell in a pattern", frame: req("14", "subscribe", `{"topics": ["ok.\u0007"]}`), codes: []int{-32602}, id: "14"},
		{name: "newline in a pattern", frame: req("15", "subscribe", `{"topics": ["ok.a\nb"]}`), codes: []int{-32602}, id: "15"},
		{name: "DEL in a published topic", frame: req("16", "publish", `{"topic": "ok.a\u007f", "data": 1}`), codes: []int{-32602}, id: "16"},
		// JSON forbids unescaped control characters in strings, so a raw
		// NUL byte fails parsing before any topic check.
		{name: "raw NUL byte in a pattern", frame: req("17", "subscribe", "{\"topics\": [\"ok.a\x00b\"]}"), codes: []int{-32700}, id: "null"},

		{name: "64-byte topic", frame: req("18", "subscribe", `{"topics": ["ok.`+strings.Repeat("x", 61)+`"]}`), id: "18"},
		{name: "255-byte topic", frame: req("19", "subscribe", `{"topics": ["ok.`+strings.Repeat("x", 252)+`"]}`), id: "19"},
		{name: "256-byte topic", frame: req("20", "subscribe", `{"topics": ["ok.`+strings.Repeat("x", 253)+`"]}`), codes: []int{-32602}, id: "20"},
		{name: "256-byte published topic", frame: req("21", "publish", `{"topic": "ok.`+strings.Repeat("x", 253)+`", "data": 1}`), codes: []int{-32602}, id: "21"},

		{name: "SQL in a pattern", frame: req("22", "subscribe", `{"topics": ["ok'; DROP TABLE realtime.events; --"]}`), codes: []int{-32602}, id: "22"},
		{name: "SQL in a published topic", frame: req("23", "publish", `{"topic": "control'); DELETE FROM realtime.events; --", "data": 1}`), codes: []int{-32602}, id: "23"},
		{name: "SQL in data", frame: req("24", "publish", `{"topic": "control", "data": `+string(sqlData)+`}`), id: "24", published: []string{string(sqlData)}},
		{name: "SQL in ephemeral data", frame: req("25", "publish", `{"topic": "control", "durable": false, "data": `+string(sqlData)+`}`), id: "25", result: `{}`, published: []string{string(sqlData)}},

		// Postgres jsonb cannot store U+0000, so the sidecar rejects it.
		{name: "NUL in data", frame: req("30", "publish", `{"topic": "control", "data": "a\u0000b"}`), codes: []int{-32602}, id: "30"},

		{name: "100,000 patterns", frame: manyTopics, codes: []int{-32602}, id: `"many"`},
		{name: "publish without permission", frame: req("26", "publish", `{"topic": "other.a", "data": 1}`), codes: []int{-32003}, id: "26"},
		{name: "publish into db.", frame: req("27", "publish", `{"topic": "db.public.users", "data": 1}`), codes: []int{-32003}, id: "27"},
		{name: "publish into sys.", frame: req("28", "publish", `{"topic": "sys.shutdown", "data": 1}`), codes: []int{-32003}, id: "28"},
		{name: "auth as another subject", frame: req("29", "auth", `{"token": "`+token(t, "intruder", []string{">"}, []string{">"})+`"}`), codes: []int{-32003}, id: "29"},

		{name: "binary frame", frame: req("1", "ping", "null"), closeType: websocket.MessageBinary, closeCode: websocket.StatusUnsupportedData},
		{name: "invalid UTF-8", frame: req("\"\xff\xfe\"", "ping", "null"), closeType: websocket.MessageText, closeCode: websocket.StatusInvalidFramePayloadData},
		{name: "frame over the read limit", frame: `"` + strings.Repeat("a", readLimit+1) + `"`, closeType: websocket.MessageText, closeCode: websocket.StatusMessageTooBig},
	}

	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.closeCode != 0 {
				own := dialRaw(t, sc, authHeader(tok))
				own.send(tc.closeType, tc.frame)
				if got := own.closeCode(); got != tc.closeCode {
					t.Fatalf("close code = %v, want %v", got, tc.closeCode)
				}
			} else {
				checkAdversarialReply(t, rc, tc)
			}

			// The control client receives what the frame published, then
			// one event published with SQL, so nothing stalled the sidecar.
			for _, want := range tc.published {
				if ev := next(t, control); !bytes.Equal(ev.Data, []byte(want)) {
					t.Fatalf("control event data = %s, want %s", ev.Data, want)
				}
			}
			marker := strconv.Itoa(i)
			exec(t, sql, `SELECT realtime.publish('control', $1::jsonb)`, marker)
			if ev := next(t, control); string(ev.Data) != marker {
				t.Fatalf("control event data = %s, want the marker %s", ev.Data, marker)
			}
		})
	}

	// The shared connection survived every row.
	rc.send(websocket.MessageText, req(`"end"`, "ping", "null"))
	if r := rc.readReply(); string(r.Result) != `"pong"` || string(r.ID) != `"end"` {
		t.Fatalf("ping after every row = id %s result %s, want pong", r.ID, r.Result)
	}
}

// checkAdversarialReply sends tc.frame on rc and checks the one reply,
// or for a notification that no reply comes before the next ping's pong.
func checkAdversarialReply(t *testing.T, rc *rawConn, tc adversarialCase) {
	t.Helper()
	rc.send(websocket.MessageText, tc.frame)

	if tc.notification {
		rc.send(websocket.MessageText, `{"jsonrpc": "2.0", "id": "after", "method": "ping"}`)
		r := rc.readReply()
		if string(r.ID) != `"after"` || string(r.Result) != `"pong"` {
			t.Fatalf("first message after a notification = id %s result %s error %+v, want only the pong for \"after\"", r.ID, r.Result, r.Error)
		}
		return
	}

	r := rc.readReply()
	if tc.id != "" && string(r.ID) != tc.id {
		t.Fatalf("reply id = %s, want %s (error %+v)", r.ID, tc.id, r.Error)
	}
	if len(tc.codes) == 0 {
		if r.Error != nil {
			t.Fatalf("reply error = %d %q, want a result", r.Error.Code, r.Error.Message)
		}
		if r.Result == nil {
			t.Fatal("reply has no result")
		}
		if tc.result != "" && string(r.Result) != tc.result {
			t.Fatalf("reply result = %s, want %s", r.Result, tc.result)
		}
		return
	}
	if r.Error == nil {
		t.Fatalf("reply result = %.200s, want error %v", r.Result, tc.codes)
	}
	if !slices.Contains(tc.codes, r.Error.Code) {
		t.Fatalf("reply error = %d %q, want one of %v", r.Error.Code, r.Error.Message, tc.codes)
	}
	if r.Error.Message == "" {
		t.Fatalf("error %d has no message", r.Error.Code)
	}
}
