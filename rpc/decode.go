package rpc

import (
	"bytes"
	"encoding/json"
	"errors"

	jsonv2 "github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
)

// Kind is the kind of a decoded Message.
type Kind uint8

// Message kinds. KindInvalid is the zero value, which Decode returns with an
// error.
const (
	KindInvalid Kind = iota
	KindRequest
	KindNotification
	KindResponse
)

// String returns the kind's name in lower case, for logs.
func (k Kind) String() string {
	switch k {
	case KindRequest:
		return "request"
	case KindNotification:
		return "notification"
	case KindResponse:
		return "response"
	default:
		return "invalid"
	}
}

// Message is one decoded JSON-RPC object.
//
// A request has Method and ID. A notification has Method and no ID. A
// response has ID and either Result or Error. The raw fields are copies, so
// a Message does not refer to the buffer it was decoded from.
type Message struct {
	Kind Kind

	// ID is the id as it appeared on the wire: a JSON string, number or
	// null. It is nil for a notification, and for an invalid message whose
	// id could not be read.
	ID json.RawMessage

	Method string

	// Params is the params member as sent, nil when absent. Decode does not
	// check its type; DecodeParams and CheckParams do.
	Params json.RawMessage

	// Result is the result member of a successful response. Its JSON null
	// is a valid result and is kept as the four bytes "null".
	Result json.RawMessage

	// Error is the error member of a failed response.
	Error *Error
}

// envelope holds the members of a JSON-RPC object before classification.
// A member that is present, even as null, decodes to a non-nil RawMessage.
type envelope struct {
	JSONRPC json.RawMessage `json:"jsonrpc"`
	ID      json.RawMessage `json:"id"`
	Method  json.RawMessage `json:"method"`
	Params  json.RawMessage `json:"params"`
	Result  json.RawMessage `json:"result"`
	Error   json.RawMessage `json:"error"`
}

// DecodeOptions make github.com/go-json-experiment/json accept what
// encoding/json accepts: member names in any case, repeated members (the
// last one wins) and invalid UTF-8 inside strings. With them, decoding a
// message validates it in one pass, where encoding/json scans it twice and
// every raw member once more.
var DecodeOptions = jsonv2.JoinOptions(
	jsonv2.MatchCaseInsensitiveNames(true),
	jsontext.AllowDuplicateNames(true),
	jsontext.AllowInvalidUTF8(true),
)

// unmarshalEnvelope decodes an object into env. It reports false for
// anything it does not decode, and the caller then falls back to
// encoding/json, which decides the outcome and words the error.
func unmarshalEnvelope(b []byte, env *envelope) bool {
	if firstByte(b) != '{' {
		return false
	}
	return jsonv2.Unmarshal(b, env, DecodeOptions) == nil
}

var version = []byte(`"2.0"`)

// Decode classifies one websocket message.
//
// It returns a -32700 error when b is not valid JSON. It returns a -32600
// error for a batch (a JSON array) or another value that is not an object,
// and for an object with any of these faults:
//   - "jsonrpc" is not "2.0";
//   - "method" is not a string;
//   - "id" is not a string, a number or null;
//   - request members mixed with response members, or a response without
//     an id or with an invalid error object.
//
// With an error, the returned Message carries the id when it could be read,
// so the caller can reply with EncodeError(msg.ID, err). Otherwise ID is nil
// and the reply has a null id.
//
// A params member of any JSON type is accepted here, and a JSON null params
// counts as absent. Member names match case-insensitively, as in
// encoding/json.
func Decode(b []byte) (Message, *Error) {
	return decode(b, true)
}

// decode is Decode. With fast false it decodes with encoding/json alone,
// which the tests compare the fast path against.
func decode(b []byte, fast bool) (Message, *Error) {
	var env envelope
	if !fast || !unmarshalEnvelope(b, &env) {
		env = envelope{}
		if err := json.Unmarshal(b, &env); err != nil {
			return Message{}, decodeError(b, err)
		}
	}

	// Unmarshal accepts a top-level null into a struct, so the first byte
	// decides whether b was an object at all.
	switch first := firstByte(b); first {
	case '{':
	case '[':
		return Message{}, Errorf(CodeInvalidRequest, "batches are not supported: send one JSON-RPC object per message")
	default:
		return Message{}, Errorf(CodeInvalidRequest, "a message must be a JSON object, not %s", jsonType(first))
	}

	var msg Message
	if env.ID != nil {
		if !validID(env.ID) {
			return Message{}, Errorf(CodeInvalidRequest, `"id" must be a string, a number or null, not %s`, jsonType(env.ID[0]))
		}
		msg.ID = env.ID
	}

	if !bytes.Equal(env.JSONRPC, version) && !isVersionString(env.JSONRPC) {
		return msg, Errorf(CodeInvalidRequest, `"jsonrpc" must be "2.0"`)
	}

	if env.Method != nil {
		return decodeCall(msg, &env)
	}
	return decodeResponse(msg, &env)
}

// decodeCall completes msg as a request or a notification.
func decodeCall(msg Message, env *envelope) (Message, *Error) {
	if env.Result != nil || env.Error != nil {
		return msg, Errorf(CodeInvalidRequest, `a message with "method" must not have "result" or "error"`)
	}

	method, ok := decodeString(env.Method)
	if !ok {
		return msg, Errorf(CodeInvalidRequest, `"method" must be a string, not %s`, jsonType(env.Method[0]))
	}
	msg.Method = method

	if !bytes.Equal(env.Params, null) {
		msg.Params = env.Params
	}

	msg.Kind = KindNotification
	if msg.ID != nil {
		msg.Kind = KindRequest
	}
	return msg, nil
}

// decodeResponse completes msg as a response.
func decodeResponse(msg Message, env *envelope) (Message, *Error) {
	switch {
	case env.Result == nil && env.Error == nil:
		return msg, Errorf(CodeInvalidRequest, `a message must have "method", "result" or "error"`)
	case env.Result != nil && env.Error != nil:
		return msg, Errorf(CodeInvalidRequest, `a response must not have both "result" and "error"`)
	case msg.ID == nil:
		return msg, Errorf(CodeInvalidRequest, `a response must have an "id"`)
	}

	if env.Result != nil {
		msg.Result = env.Result
		msg.Kind = KindResponse
		return msg, nil
	}

	e, ok := decodeErrorObject(env.Error)
	if !ok {
		return msg, Errorf(CodeInvalidRequest, `"error" must be an object with an integer "code" and a string "message"`)
	}
	msg.Error = e
	msg.Kind = KindResponse
	return msg, nil
}

// decodeErrorObject decodes the error member of a response. Code and
// message are required; data, when present, is kept raw.
func decodeErrorObject(raw json.RawMessage) (*Error, bool) {
	if firstByte(raw) != '{' {
		return nil, false
	}

	var obj struct {
		Code    *int            `json:"code"`
		Message *string         `json:"message"`
		Data    json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(raw, &obj); err != nil || obj.Code == nil || obj.Message == nil {
		return nil, false
	}

	e := &Error{Code: *obj.Code, Message: *obj.Message}
	if obj.Data != nil {
		e.Data = obj.Data
	}
	return e, true
}

// decodeError maps an error from json.Unmarshal of a whole message.
func decodeError(b []byte, err error) *Error {
	var syntaxErr *json.SyntaxError
	if errors.As(err, &syntaxErr) {
		return Errorf(CodeParseError, "parse error: invalid JSON at byte %d: %s", syntaxErr.Offset, syntaxErr.Error())
	}

	// The only other failure is a top-level value that is not an object.
	if firstByte(b) == '[' {
		return Errorf(CodeInvalidRequest, "batches are not supported: send one JSON-RPC object per message")
	}
	return Errorf(CodeInvalidRequest, "a message must be a JSON object, not %s", jsonType(firstByte(b)))
}

var null = []byte("null")

// validID reports whether raw, a valid JSON value, is a string, a number or
// null.
func validID(raw json.RawMessage) bool {
	switch c := raw[0]; {
	case c == '"', c == 'n', c == '-':
		return true
	default:
		return c >= '0' && c <= '9'
	}
}

// isVersionString reports whether raw is a JSON string equal to "2.0"
// written with escapes, such as "2\u002e0".
func isVersionString(raw json.RawMessage) bool {
	s, ok := decodeString(raw)
	return ok && s == "2.0"
}

// decodeString returns the value of raw when it is a JSON string. It avoids
// a second decoder pass for strings without escapes, which method names
// nearly always are.
func decodeString(raw json.RawMessage) (string, bool) {
	if len(raw) < 2 || raw[0] != '"' {
		return "", false
	}

	inner := raw[1 : len(raw)-1]
	if bytes.IndexByte(inner, '\\') < 0 {
		return string(inner), true
	}

	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", false
	}
	return s, true
}

// firstByte returns the first byte of b after JSON whitespace, or 0.
func firstByte(b []byte) byte {
	for _, c := range b {
		switch c {
		case ' ', '\t', '\n', '\r':
		default:
			return c
		}
	}
	return 0
}

// jsonType names the type of a JSON value from its first byte, for error
// messages.
func jsonType(first byte) string {
	switch {
	case first == '{':
		return "an object"
	case first == '[':
		return "an array"
	case first == '"':
		return "a string"
	case first == 't' || first == 'f':
		return "a boolean"
	case first == 'n':
		return "null"
	case first == '-' || first >= '0' && first <= '9':
		return "a number"
	default:
		return "empty"
	}
}
