package rpc

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func raw(s string) json.RawMessage {
	if s == "" {
		return nil
	}
	return json.RawMessage(s)
}

func TestDecodeValid(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want Message
	}{
		{
			name: "request with number id",
			in:   `{"jsonrpc":"2.0","id":1,"method":"subscribe","params":{"topics":["a"]}}`,
			want: Message{Kind: KindRequest, ID: raw(`1`), Method: "subscribe", Params: raw(`{"topics":["a"]}`)},
		},
		{
			name: "request with string id",
			in:   `{"jsonrpc":"2.0","id":"abc","method":"ping"}`,
			want: Message{Kind: KindRequest, ID: raw(`"abc"`), Method: "ping"},
		},
		{
			name: "request with null id",
			in:   `{"jsonrpc":"2.0","id":null,"method":"ping"}`,
			want: Message{Kind: KindRequest, ID: raw(`null`), Method: "ping"},
		},
		{
			name: "id kept byte for byte",
			in:   `{"jsonrpc":"2.0","id": 1.50e2 ,"method":"ping"}`,
			want: Message{Kind: KindRequest, ID: raw(`1.50e2`), Method: "ping"},
		},
		{
			name: "negative id",
			in:   `{"jsonrpc":"2.0","id":-7,"method":"ping"}`,
			want: Message{Kind: KindRequest, ID: raw(`-7`), Method: "ping"},
		},
		{
			name: "string id with escapes kept byte for byte",
			in:   `{"jsonrpc":"2.0","id":"a\u00e9\"b","method":"ping"}`,
			want: Message{Kind: KindRequest, ID: raw(`"a\u00e9\"b"`), Method: "ping"},
		},
		{
			name: "notification",
			in:   `{"jsonrpc":"2.0","method":"app.typing","params":[1,2]}`,
			want: Message{Kind: KindNotification, Method: "app.typing", Params: raw(`[1,2]`)},
		},
		{
			name: "method with escapes",
			in:   `{"jsonrpc":"2.0","method":"app.\u0061b"}`,
			want: Message{Kind: KindNotification, Method: "app.ab"},
		},
		{
			name: "version with escapes",
			in:   `{"jsonrpc":"2\u002e0","method":"ping"}`,
			want: Message{Kind: KindNotification, Method: "ping"},
		},
		{
			name: "null params counts as absent",
			in:   `{"jsonrpc":"2.0","id":1,"method":"ping","params":null}`,
			want: Message{Kind: KindRequest, ID: raw(`1`), Method: "ping"},
		},
		{
			name: "params of a scalar type left to DecodeParams",
			in:   `{"jsonrpc":"2.0","id":1,"method":"ping","params":5}`,
			want: Message{Kind: KindRequest, ID: raw(`1`), Method: "ping", Params: raw(`5`)},
		},
		{
			name: "surrounding whitespace",
			in:   " \n\t{\"jsonrpc\":\"2.0\",\"method\":\"ping\"} \r\n",
			want: Message{Kind: KindNotification, Method: "ping"},
		},
		{
			name: "unknown members ignored",
			in:   `{"jsonrpc":"2.0","method":"ping","extra":{"a":1}}`,
			want: Message{Kind: KindNotification, Method: "ping"},
		},
		{
			name: "result response",
			in:   `{"jsonrpc":"2.0","id":"s1","result":{"ok":true}}`,
			want: Message{Kind: KindResponse, ID: raw(`"s1"`), Result: raw(`{"ok":true}`)},
		},
		{
			name: "null result",
			in:   `{"jsonrpc":"2.0","id":3,"result":null}`,
			want: Message{Kind: KindResponse, ID: raw(`3`), Result: raw(`null`)},
		},
		{
			name: "error response",
			in:   `{"jsonrpc":"2.0","id":3,"error":{"code":-32000,"message":"busy"}}`,
			want: Message{Kind: KindResponse, ID: raw(`3`), Error: &Error{Code: -32000, Message: "busy"}},
		},
		{
			name: "error response with data",
			in:   `{"jsonrpc":"2.0","id":3,"error":{"code":1,"message":"m","data":{"x": [1]}}}`,
			want: Message{Kind: KindResponse, ID: raw(`3`), Error: &Error{Code: 1, Message: "m", Data: raw(`{"x": [1]}`)}},
		},
		{
			name: "error response with null id",
			in:   `{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"parse error"}}`,
			want: Message{Kind: KindResponse, ID: raw(`null`), Error: &Error{Code: -32700, Message: "parse error"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Decode([]byte(tt.in))
			if err != nil {
				t.Fatalf("Decode(%s) error = %v, want nil", tt.in, err)
			}
			if diff := cmp.Diff(got, tt.want); diff != "" {
				t.Errorf("Decode(%s) mismatch (-got +want):\n%s", tt.in, diff)
			}
		})
	}
}

func TestDecodeInvalid(t *testing.T) {
	tests := []struct {
		name     string
		in       string
		wantCode int
		wantID   json.RawMessage
		wantMsg  string // a substring of the error message
	}{
		{"empty", ``, CodeParseError, nil, "invalid JSON"},
		{"whitespace only", "  \n", CodeParseError, nil, "invalid JSON"},
		{"truncated object", `{"jsonrpc":"2.0","id":1,"method":"ping"`, CodeParseError, nil, "invalid JSON"},
		{"trailing garbage", `{"jsonrpc":"2.0","id":1,"method":"ping"} x`, CodeParseError, nil, "invalid JSON"},
		{"two objects", `{"jsonrpc":"2.0","method":"ping"}{"jsonrpc":"2.0","method":"ping"}`, CodeParseError, nil, "invalid JSON"},
		{"single quotes", `{'jsonrpc':'2.0'}`, CodeParseError, nil, "invalid JSON"},
		{"invalid batch", `[{"jsonrpc":"2.0","method":"ping"},`, CodeParseError, nil, "invalid JSON"},

		{"batch", `[{"jsonrpc":"2.0","id":1,"method":"ping"}]`, CodeInvalidRequest, nil, "batches are not supported"},
		{"empty batch", `[]`, CodeInvalidRequest, nil, "batches are not supported"},
		{"string", `"ping"`, CodeInvalidRequest, nil, "must be a JSON object, not a string"},
		{"number", `42`, CodeInvalidRequest, nil, "must be a JSON object, not a number"},
		{"boolean", `true`, CodeInvalidRequest, nil, "must be a JSON object, not a boolean"},
		{"null", `null`, CodeInvalidRequest, nil, "must be a JSON object, not null"},

		{"missing version", `{"id":1,"method":"ping"}`, CodeInvalidRequest, raw(`1`), `"jsonrpc" must be "2.0"`},
		{"version 1.0", `{"jsonrpc":"1.0","id":1,"method":"ping"}`, CodeInvalidRequest, raw(`1`), `"jsonrpc" must be "2.0"`},
		{"version as number", `{"jsonrpc":2.0,"id":"a","method":"ping"}`, CodeInvalidRequest, raw(`"a"`), `"jsonrpc" must be "2.0"`},
		{"version with space", `{"jsonrpc":"2.0 ","id":1,"method":"ping"}`, CodeInvalidRequest, raw(`1`), `"jsonrpc" must be "2.0"`},
		{"version null", `{"jsonrpc":null,"method":"ping"}`, CodeInvalidRequest, nil, `"jsonrpc" must be "2.0"`},

		{"method number", `{"jsonrpc":"2.0","id":1,"method":5}`, CodeInvalidRequest, raw(`1`), `"method" must be a string, not a number`},
		{"method null", `{"jsonrpc":"2.0","id":1,"method":null}`, CodeInvalidRequest, raw(`1`), `"method" must be a string, not null`},
		{"method object", `{"jsonrpc":"2.0","method":{}}`, CodeInvalidRequest, nil, `"method" must be a string, not an object`},

		{"id object", `{"jsonrpc":"2.0","id":{"a":1},"method":"ping"}`, CodeInvalidRequest, nil, `"id" must be a string, a number or null, not an object`},
		{"id array", `{"jsonrpc":"2.0","id":[1],"method":"ping"}`, CodeInvalidRequest, nil, `"id" must be a string, a number or null, not an array`},
		{"id boolean", `{"jsonrpc":"2.0","id":true,"method":"ping"}`, CodeInvalidRequest, nil, `"id" must be a string, a number or null, not a boolean`},
		{"id checked before version", `{"id":false}`, CodeInvalidRequest, nil, `"id" must be`},

		{"method and result", `{"jsonrpc":"2.0","id":1,"method":"ping","result":1}`, CodeInvalidRequest, raw(`1`), `must not have "result" or "error"`},
		{"method and error", `{"jsonrpc":"2.0","id":1,"method":"ping","error":{"code":1,"message":"m"}}`, CodeInvalidRequest, raw(`1`), `must not have "result" or "error"`},
		{"method and null result", `{"jsonrpc":"2.0","id":1,"method":"ping","result":null}`, CodeInvalidRequest, raw(`1`), `must not have "result" or "error"`},
		{"result and error", `{"jsonrpc":"2.0","id":1,"result":1,"error":{"code":1,"message":"m"}}`, CodeInvalidRequest, raw(`1`), `must not have both "result" and "error"`},
		{"null error beside result", `{"jsonrpc":"2.0","id":1,"result":1,"error":null}`, CodeInvalidRequest, raw(`1`), `must not have both "result" and "error"`},
		{"nothing", `{"jsonrpc":"2.0","id":1}`, CodeInvalidRequest, raw(`1`), `must have "method", "result" or "error"`},
		{"empty object", `{}`, CodeInvalidRequest, nil, `"jsonrpc" must be "2.0"`},
		{"response without id", `{"jsonrpc":"2.0","result":1}`, CodeInvalidRequest, nil, `a response must have an "id"`},

		{"error not object", `{"jsonrpc":"2.0","id":1,"error":"boom"}`, CodeInvalidRequest, raw(`1`), `"error" must be an object`},
		{"error null", `{"jsonrpc":"2.0","id":1,"error":null}`, CodeInvalidRequest, raw(`1`), `"error" must be an object`},
		{"error without code", `{"jsonrpc":"2.0","id":1,"error":{"message":"m"}}`, CodeInvalidRequest, raw(`1`), `integer "code"`},
		{"error without message", `{"jsonrpc":"2.0","id":1,"error":{"code":1}}`, CodeInvalidRequest, raw(`1`), `string "message"`},
		{"error fractional code", `{"jsonrpc":"2.0","id":1,"error":{"code":1.5,"message":"m"}}`, CodeInvalidRequest, raw(`1`), `integer "code"`},
		{"error message number", `{"jsonrpc":"2.0","id":1,"error":{"code":1,"message":2}}`, CodeInvalidRequest, raw(`1`), `string "message"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Decode([]byte(tt.in))
			if err == nil {
				t.Fatalf("Decode(%s) = %+v, want error %d", tt.in, got, tt.wantCode)
			}
			if err.Code != tt.wantCode {
				t.Errorf("Decode(%s) code = %d, want %d (message %q)", tt.in, err.Code, tt.wantCode, err.Message)
			}
			if !strings.Contains(err.Message, tt.wantMsg) {
				t.Errorf("Decode(%s) message = %q, want it to contain %q", tt.in, err.Message, tt.wantMsg)
			}
			if string(got.ID) != string(tt.wantID) || (got.ID == nil) != (tt.wantID == nil) {
				t.Errorf("Decode(%s) ID = %q, want %q", tt.in, got.ID, tt.wantID)
			}
			if got.Kind != KindInvalid {
				t.Errorf("Decode(%s) Kind = %v, want invalid", tt.in, got.Kind)
			}
		})
	}
}

func TestDecodeCopiesInput(t *testing.T) {
	in := []byte(`{"jsonrpc":"2.0","id":"x","method":"m","params":{"a":1}}`)
	msg, err := Decode(in)
	if err != nil {
		t.Fatalf("Decode: %v", err)
	}

	for i := range in {
		in[i] = ' '
	}

	if string(msg.ID) != `"x"` {
		t.Errorf("ID after overwriting the input = %q, want %q", msg.ID, `"x"`)
	}
	if string(msg.Params) != `{"a":1}` {
		t.Errorf("Params after overwriting the input = %q, want %q", msg.Params, `{"a":1}`)
	}
}

func TestKindString(t *testing.T) {
	tests := map[Kind]string{
		KindInvalid:      "invalid",
		KindRequest:      "request",
		KindNotification: "notification",
		KindResponse:     "response",
		Kind(99):         "invalid",
	}
	for k, want := range tests {
		if got := k.String(); got != want {
			t.Errorf("Kind(%d).String() = %q, want %q", k, got, want)
		}
	}
}

func BenchmarkDecodeRequest(b *testing.B) {
	in := []byte(`{"jsonrpc":"2.0","id":17,"method":"subscribe","params":{"topics":["orders.*","chat.room1"],"since":1200}}`)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Decode(in); err != nil {
			b.Fatal(err)
		}
	}
}
