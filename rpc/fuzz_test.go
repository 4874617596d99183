package rpc

import (
	"bytes"
	"encoding/json"
	"testing"
	"unicode/utf8"
)

func FuzzDecode(f *testing.F) {
	seeds := []string{
		`{"jsonrpc":"2.0","id":1,"method":"subscribe","params":{"topics":["a.>"],"since":5}}`,
		`{"jsonrpc":"2.0","method":"app.typing","params":[1]}`,
		`{"jsonrpc":"2.0","id":"x","result":{"ok":true}}`,
		`{"jsonrpc":"2.0","id":null,"error":{"code":-1,"message":"m","data":[null]}}`,
		`{"jsonrpc":"2\u002e0","id":-0.5e3,"method":"a\\b"}`,
		`[{"jsonrpc":"2.0","method":"ping"}]`,
		`{"jsonrpc":"2.0","id":{},"method":"ping"}`,
		`{"jsonrpc":"2.0","id":1,"method":"ping","result":null}`,
		`null`,
		``,
		`{`,
	}
	for _, s := range seeds {
		f.Add([]byte(s))
	}

	f.Fuzz(func(t *testing.T, in []byte) {
		msg, rpcErr := Decode(in)
		if rpcErr != nil {
			if rpcErr.Code != CodeParseError && rpcErr.Code != CodeInvalidRequest {
				t.Fatalf("Decode(%q) code = %d, want %d or %d", in, rpcErr.Code, CodeParseError, CodeInvalidRequest)
			}
			if out := EncodeError(msg.ID, rpcErr); !json.Valid(out) {
				t.Fatalf("EncodeError after Decode(%q) is not valid JSON: %s", in, out)
			}
			return
		}

		out := reencode(msg)
		if !json.Valid(out) {
			t.Fatalf("re-encoding Decode(%q) is not valid JSON: %s", in, out)
		}

		again, rpcErr := Decode(out)
		if rpcErr != nil {
			t.Fatalf("Decode(%s), re-encoded from %q: %v", out, in, rpcErr)
		}
		if again.Kind != msg.Kind {
			t.Errorf("Kind after round trip = %v, want %v", again.Kind, msg.Kind)
		}
		if !bytes.Equal(again.ID, msg.ID) {
			t.Errorf("ID after round trip = %q, want %q", again.ID, msg.ID)
		}
		if !bytes.Equal(again.Params, msg.Params) {
			t.Errorf("Params after round trip = %q, want %q", again.Params, msg.Params)
		}
		if utf8.ValidString(msg.Method) && again.Method != msg.Method {
			t.Errorf("Method after round trip = %q, want %q", again.Method, msg.Method)
		}
	})
}

// reencode encodes msg again with the Encode function for its kind.
func reencode(msg Message) []byte {
	var params any
	if msg.Params != nil {
		params = msg.Params
	}

	switch {
	case msg.Kind == KindRequest:
		return EncodeRequest(msg.ID, msg.Method, params)
	case msg.Kind == KindNotification:
		return EncodeNotification(msg.Method, params)
	case msg.Error != nil:
		return EncodeError(msg.ID, msg.Error)
	default:
		return EncodeResult(msg.ID, msg.Result)
	}
}
