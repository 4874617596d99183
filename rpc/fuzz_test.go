package rpc

import (
	"bytes"
	"encoding/json"
	"reflect"
	"regexp"
	"testing"
	"unicode/utf8"
)

// FuzzDecode feeds arbitrary websocket messages to Decode, which must never
// panic. It fails with -32700 exactly when the input is not valid JSON, and
// with -32600 for other faults. A decoded message encodes again to valid
// JSON that decodes to the same message. The seed corpus is in
// testdata/fuzz/FuzzDecode.
func FuzzDecode(f *testing.F) {
	seeds := []string{
		`{"jsonrpc":"2.0","id":1,"method":"subscribe","params":{"topics":["a.>"],"since":5}}`,
		`{"jsonrpc":"2.0","method":"app.typing","params":[1]}`,
		`{"jsonrpc":"2.0","id":"x","result":{"ok":true}}`,
		`{"jsonrpc":"2.0","id":null,"error":{"code":-1,"message":"m","data":[null]}}`,
		`{"jsonrpc":"2\u002e0","id":-0.5e3,"method":"a\\b"}`,
		`[{"jsonrpc":"2.0","method":"ping"}]`,
		`[]`,
		`{"jsonrpc":"2.0","id":{},"method":"ping"}`,
		`{"jsonrpc":"2.0","id":[1],"method":"ping"}`,
		`{"jsonrpc":"2.0","id":true,"method":"ping"}`,
		`{"jsonrpc":"2.0","id":1e400,"method":"ping"}`,
		`{"jsonrpc":"2.0","id":1,"method":"ping","result":null}`,
		`{"jsonrpc":"2.0","id":1,"id":"two","method":"ping","method":7}`,
		`{"JSONRPC":"2.0","ID":1,"Method":"ping","PARAMS":{}}`,
		`{"jsonrpc":"2.0","id":"\ud800","method":"\u0000"}`,
		"{\"jsonrpc\":\"2.0\",\"id\":\"\xff\xfe\",\"method\":\"p\xc3\x28\"}",
		`{"jsonrpc":"2.0","id":7,"error":{"code":1.5,"message":"m"}}`,
		`{"jsonrpc":"2.0","id":7,"error":{"code":99999999999999999999,"message":"m"}}`,
		`{"jsonrpc":"2.0","id":7,"error":{"code":1,"message":"m","data": { "a" : [ 1 , 2 ] } }}`,
		`{"jsonrpc":"2.0","method":"publish","params":{"topic":"chat.1","data":` + nested(200) + `}}`,
		"{\"j\u017fonrpc\":\"2.0\",\"method\":\"p\",\"param\u017f\":{}}",
		`{"jsonrpc":"2.0","method":"p","par\u0061ms":{},"PaRaMs":[1]}`,
		`{"jsonrpc":"2.0","method":"p","params":1} {"x":1}`,
		`{"jsonrpc":"2.0","method":"p","params":1}x`,
		`{"jsonrpc":"2.0","method":"p","params":{"a":1,"a":2}}`,
		`{"jsonrpc":"2.0","method":"p","params":"\ud800\udc00"}`,
		`null`,
		`"2.0"`,
		``,
		`{`,
		"\x00",
	}
	for _, s := range seeds {
		f.Add([]byte(s))
	}

	f.Fuzz(func(t *testing.T, in []byte) {
		msg, rpcErr := Decode(in)
		slowMsg, slowErr := decode(in, false)
		if !reflect.DeepEqual(msg, slowMsg) || !reflect.DeepEqual(rpcErr, slowErr) {
			t.Fatalf("Decode(%q) = %+v, %v; with encoding/json alone: %+v, %v", in, msg, rpcErr, slowMsg, slowErr)
		}
		if rpcErr != nil {
			checkDecodeError(t, in, msg, rpcErr)
			return
		}

		checkMessageShape(t, in, msg)
		checkParams(t, msg.Params)

		out := reencode(msg)
		if !json.Valid(out) {
			t.Fatalf("re-encoding Decode(%q) is not valid JSON: %s", in, out)
		}

		again, rpcErr := Decode(out)
		if rpcErr != nil {
			t.Fatalf("Decode(%s), re-encoded from %q: %v", out, in, rpcErr)
		}
		checkRoundTrip(t, msg, again)
	})
}

// checkDecodeError checks the error that Decode returned for in.
func checkDecodeError(t *testing.T, in []byte, msg Message, rpcErr *Error) {
	t.Helper()

	wantCode := CodeInvalidRequest
	if !json.Valid(in) {
		wantCode = CodeParseError
	}
	if rpcErr.Code != wantCode {
		t.Fatalf("Decode(%q) code = %d, want %d (json.Valid = %v)", in, rpcErr.Code, wantCode, json.Valid(in))
	}
	if rpcErr.Message == "" {
		t.Errorf("Decode(%q) returned code %d with an empty message", in, rpcErr.Code)
	}
	if msg.Kind != KindInvalid {
		t.Errorf("Decode(%q) with an error: Kind = %v, want %v", in, msg.Kind, KindInvalid)
	}
	if msg.ID != nil && !isIDValue(msg.ID) {
		t.Errorf("Decode(%q) with an error: ID = %q, want a JSON string, number or null", in, msg.ID)
	}

	if out := EncodeError(msg.ID, rpcErr); !json.Valid(out) {
		t.Fatalf("EncodeError after Decode(%q) is not valid JSON: %s", in, out)
	}
}

// checkMessageShape checks that a decoded message has the members its kind
// requires and no others.
func checkMessageShape(t *testing.T, in []byte, msg Message) {
	t.Helper()

	if msg.ID != nil && !isIDValue(msg.ID) {
		t.Errorf("Decode(%q) ID = %q, want a JSON string, number or null", in, msg.ID)
	}

	switch msg.Kind {
	case KindRequest, KindNotification:
		if (msg.Kind == KindRequest) != (msg.ID != nil) {
			t.Errorf("Decode(%q) Kind = %v with ID %q", in, msg.Kind, msg.ID)
		}
		if msg.Result != nil || msg.Error != nil {
			t.Errorf("Decode(%q) %v has a result or an error", in, msg.Kind)
		}
	case KindResponse:
		if msg.ID == nil {
			t.Errorf("Decode(%q) response has no ID", in)
		}
		if (msg.Result == nil) == (msg.Error == nil) {
			t.Errorf("Decode(%q) response: Result = %q, Error = %v, want exactly one", in, msg.Result, msg.Error)
		}
		if msg.Method != "" || msg.Params != nil {
			t.Errorf("Decode(%q) response has method %q and params %q", in, msg.Method, msg.Params)
		}
	default:
		t.Fatalf("Decode(%q) Kind = %v without an error", in, msg.Kind)
	}
}

// fuzzParams is a params struct with the member types of the sidecar's
// methods, so that DecodeParams meets strings, arrays, integers and objects.
type fuzzParams struct {
	Topics []string        `json:"topics"`
	Since  *int64          `json:"since"`
	Topic  string          `json:"topic"`
	Data   json.RawMessage `json:"data"`
	Token  string          `json:"token"`
	Limit  uint8           `json:"limit"`
	Nested struct {
		Flag bool `json:"flag"`
	} `json:"nested"`
}

// checkParams decodes params as the sidecar's methods do. Every failure must
// be a -32602 error.
func checkParams(t *testing.T, params json.RawMessage) {
	t.Helper()

	if params != nil && (!json.Valid(params) || bytes.Equal(params, null)) {
		t.Fatalf("Params = %q, want nil or valid JSON other than null", params)
	}

	var p fuzzParams
	if rpcErr := DecodeParams(params, &p); rpcErr != nil {
		if rpcErr.Code != CodeInvalidParams {
			t.Errorf("DecodeParams(%q) code = %d, want %d", params, rpcErr.Code, CodeInvalidParams)
		}
		if m := sameTypes.FindStringSubmatch(rpcErr.Message); m != nil && m[1] == m[2] {
			t.Errorf("DecodeParams(%q) message = %q, which names the same type twice", params, rpcErr.Message)
		}
	}

	// Into an any, only the checks of CheckParams and numbers that do not
	// fit a float64 can fail.
	var anyParams any
	rpcErr := DecodeParams(params, &anyParams)
	checkErr := CheckParams(params)
	switch {
	case rpcErr == nil && checkErr != nil:
		t.Errorf("DecodeParams(%q, *any) = nil, but CheckParams = %v", params, checkErr)
	case rpcErr != nil && checkErr != nil:
		if rpcErr.Message != checkErr.Message {
			t.Errorf("DecodeParams(%q, *any) = %v, want the error of CheckParams %v", params, rpcErr, checkErr)
		}
	case rpcErr != nil && rpcErr.Message != floatRangeMessage:
		t.Errorf("DecodeParams(%q, *any) = %v, but CheckParams = nil", params, rpcErr)
	}
}

// sameTypes finds the two JSON types of a type mismatch message.
var sameTypes = regexp.MustCompile(`must be (an? [a-z0-9 ]+), not (an? [a-z0-9 ]+)$`)

// floatRangeMessage is the message of DecodeParams for a number beyond the
// range of the float64 that encoding/json decodes into an any.
const floatRangeMessage = "invalid params: a number is out of range: numbers must be from -1.7976931348623157e+308 to 1.7976931348623157e+308"

// checkRoundTrip compares a decoded message with the decoding of its
// re-encoding. Strings with invalid UTF-8 are exempt, because encoding
// replaces those bytes with U+FFFD. The error data is compared compacted,
// because encoding/json compacts a json.RawMessage.
func checkRoundTrip(t *testing.T, msg, again Message) {
	t.Helper()

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
	if !bytes.Equal(again.Result, msg.Result) {
		t.Errorf("Result after round trip = %q, want %q", again.Result, msg.Result)
	}

	if msg.Error == nil {
		return
	}
	if again.Error == nil {
		t.Fatalf("Error after round trip = nil, want %v", msg.Error)
	}
	if again.Error.Code != msg.Error.Code {
		t.Errorf("Error.Code after round trip = %d, want %d", again.Error.Code, msg.Error.Code)
	}
	if utf8.ValidString(msg.Error.Message) && again.Error.Message != msg.Error.Message {
		t.Errorf("Error.Message after round trip = %q, want %q", again.Error.Message, msg.Error.Message)
	}
	if got, want := compactData(t, again.Error.Data), compactData(t, msg.Error.Data); utf8.Valid(want) && !bytes.Equal(got, want) {
		t.Errorf("Error.Data after round trip = %q, want %q", got, want)
	}
}

// compactData returns the compact JSON of a decoded Error.Data, or nil when
// there is no data.
func compactData(t *testing.T, data any) []byte {
	t.Helper()

	if data == nil {
		return nil
	}
	raw, ok := data.(json.RawMessage)
	if !ok {
		t.Fatalf("decoded Error.Data has type %T, want json.RawMessage", data)
	}
	var buf bytes.Buffer
	if err := json.Compact(&buf, raw); err != nil {
		t.Fatalf("decoded Error.Data %q is not valid JSON: %v", raw, err)
	}
	return buf.Bytes()
}

// isIDValue reports whether raw is valid JSON of a type JSON-RPC allows for
// an id: a string, a number or null.
func isIDValue(raw json.RawMessage) bool {
	if !json.Valid(raw) {
		return false
	}
	switch c := firstByte(raw); {
	case c == '"', c == 'n', c == '-':
		return true
	default:
		return c >= '0' && c <= '9'
	}
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

// nested returns n nested JSON arrays around a zero.
func nested(n int) string {
	return string(bytes.Repeat([]byte("["), n)) + "0" + string(bytes.Repeat([]byte("]"), n))
}
