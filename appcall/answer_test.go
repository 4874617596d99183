package appcall

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/pgsidecar/sidecar/rpc"
)

func TestSameID(t *testing.T) {
	tests := []struct {
		a, b string
		want bool
	}{
		{`7`, `7`, true},
		{`7`, `8`, false},
		{`7`, `7.0`, true},
		{`7`, `7e0`, true},
		{`-3`, `-3`, true},
		{`9007199254740993`, `9007199254740992`, false},
		{`"s1"`, `"s1"`, true},
		{`"a"`, `"\u0061"`, true},
		{`"a"`, `"b"`, false},
		{`"7"`, `7`, false},
		{`null`, `7`, false},
		{`null`, `null`, true},
		{` 7 `, `7`, true},
		{``, `7`, false},
	}
	for _, tt := range tests {
		got := sameID(json.RawMessage(tt.a), json.RawMessage(tt.b))
		if got != tt.want {
			t.Errorf("sameID(%s, %s) = %v, want %v", tt.a, tt.b, got, tt.want)
		}
	}
}

func TestDecodeResponseAccepts(t *testing.T) {
	tests := []struct {
		name string
		body string
		want rpc.Message
	}{
		{
			name: "result kept byte for byte",
			body: `{"jsonrpc":"2.0","id":7,"result":{"sum" : 5}}`,
			want: rpc.Message{Kind: rpc.KindResponse, ID: json.RawMessage(`7`), Result: json.RawMessage(`{"sum" : 5}`)},
		},
		{
			name: "null result",
			body: `{"jsonrpc":"2.0","id":7,"result":null}`,
			want: rpc.Message{Kind: rpc.KindResponse, ID: json.RawMessage(`7`), Result: json.RawMessage(`null`)},
		},
		{
			name: "re-encoded id",
			body: "\n{\"jsonrpc\":\"2.0\",\"id\":7.0,\"result\":1}\n",
			want: rpc.Message{Kind: rpc.KindResponse, ID: json.RawMessage(`7.0`), Result: json.RawMessage(`1`)},
		},
		{
			name: "error with data",
			body: `{"jsonrpc":"2.0","id":7,"error":{"code":-32000,"message":"no","data":[1, 2]}}`,
			want: rpc.Message{Kind: rpc.KindResponse, ID: json.RawMessage(`7`),
				Error: &rpc.Error{Code: -32000, Message: "no", Data: json.RawMessage(`[1, 2]`)}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, rerr := decodeResponse([]byte(tt.body), json.RawMessage(`7`))
			if rerr != nil {
				t.Fatalf("decodeResponse(%s) error = %v, want none", tt.body, rerr)
			}
			if diff := cmp.Diff(got, tt.want); diff != "" {
				t.Errorf("decodeResponse(%s) (-got +want):\n%s", tt.body, diff)
			}
		})
	}
}

func TestDecodeResponseRejects(t *testing.T) {
	tests := []struct {
		name string
		body string
		want string // part of the message after the common start
	}{
		{"empty body", "", "the body is empty"},
		{"blank body", " \n", "the body is empty"},
		{"not JSON", "<html>oops</html>", "invalid JSON"},
		{"batch", `[{"jsonrpc":"2.0","id":7,"result":1}]`, "batch"},
		{"scalar", `42`, "must be a JSON object"},
		{"wrong version", `{"jsonrpc":"1.0","id":7,"result":1}`, `"jsonrpc" must be "2.0"`},
		{"no result or error", `{"jsonrpc":"2.0","id":7}`, `must have "method", "result" or "error"`},
		{"request", `{"jsonrpc":"2.0","id":7,"method":"add"}`, `JSON-RPC request for method "add"`},
		{"notification", `{"jsonrpc":"2.0","method":"add"}`, `JSON-RPC notification for method "add"`},
		{"missing id", `{"jsonrpc":"2.0","result":1}`, `must have an "id"`},
		{"other id", `{"jsonrpc":"2.0","id":8,"result":1}`, "its id 8 does not match the request's id 7"},
		{"string id", `{"jsonrpc":"2.0","id":"7","result":1}`, `its id "7" does not match the request's id 7`},
		{"null id with error", `{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"Parse error"}}`,
			"its id null does not match the request's id 7, and it carries error -32700: Parse error"},
		{"malformed error", `{"jsonrpc":"2.0","id":7,"error":"bad"}`, `"error" must be an object`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, rerr := decodeResponse([]byte(tt.body), json.RawMessage(`7`))
			if rerr == nil {
				t.Fatalf("decodeResponse(%q) error = nil, want one containing %q", tt.body, tt.want)
			}
			if rerr.Code != rpc.CodeAppCallFailed {
				t.Errorf("decodeResponse(%q) code = %d, want %d", tt.body, rerr.Code, rpc.CodeAppCallFailed)
			}
			if !strings.HasPrefix(rerr.Message, notResponse) {
				t.Errorf("decodeResponse(%q) message = %q, want prefix %q", tt.body, rerr.Message, notResponse)
			}
			if !strings.Contains(rerr.Message, tt.want) {
				t.Errorf("decodeResponse(%q) message = %q, want it to contain %q", tt.body, rerr.Message, tt.want)
			}
		})
	}
}
