package rpc

import (
	"bytes"
	"encoding/json"
	"errors"
)

var errInvalidRaw = errors.New("json.RawMessage is not valid JSON")

// The Encode functions return one complete JSON-RPC object, ready to be
// sent as a websocket text message. They write JSON without HTML escaping.
// An id must be a valid JSON value, such as Message.ID, and is not checked.
// A json.RawMessage passed as a result or params is checked with json.Valid
// and then copied verbatim, so its formatting is kept.

// EncodeResult encodes a successful response. A nil id is written as null.
// When result cannot be encoded as JSON, it returns a -32603 error response
// for the same id, because the peer waits for a response either way.
func EncodeResult(id json.RawMessage, result any) []byte {
	var buf bytes.Buffer
	buf.WriteString(`{"jsonrpc":"2.0","id":`)
	writeID(&buf, id)
	buf.WriteString(`,"result":`)
	if err := writeValue(&buf, result); err != nil {
		return EncodeError(id, Errorf(CodeInternal, "internal error: the result cannot be encoded as JSON"))
	}
	buf.WriteByte('}')
	return buf.Bytes()
}

// EncodeError encodes an error response. A nil id is written as null, as
// JSON-RPC requires when the request's id could not be read. A nil e is
// written as a -32603 internal error. When e.Data cannot be encoded as JSON,
// the error is sent without data.
func EncodeError(id json.RawMessage, e *Error) []byte {
	if e == nil {
		e = Errorf(CodeInternal, "internal error")
	}

	var buf bytes.Buffer
	buf.WriteString(`{"jsonrpc":"2.0","id":`)
	writeID(&buf, id)
	buf.WriteString(`,"error":`)
	if err := writeValue(&buf, e); err != nil {
		withoutData := *e
		withoutData.Data = nil
		_ = writeValue(&buf, &withoutData) // a code and a string always encode
	}
	buf.WriteByte('}')
	return buf.Bytes()
}

// EncodeNotification encodes a notification. Nil params are omitted. It
// returns nil when params cannot be encoded as JSON (a channel, a function,
// a NaN, an invalid json.RawMessage), so callers that pass such values must
// check for nil.
func EncodeNotification(method string, params any) []byte {
	var buf bytes.Buffer
	buf.WriteString(`{"jsonrpc":"2.0","method":`)
	if err := writeCall(&buf, method, params); err != nil {
		return nil
	}
	return buf.Bytes()
}

// EncodeRequest encodes a request with the given id, which should not be
// nil: a nil id is written as null. Nil params are omitted. Like
// EncodeNotification, it returns nil when params cannot be encoded as JSON.
func EncodeRequest(id json.RawMessage, method string, params any) []byte {
	var buf bytes.Buffer
	buf.WriteString(`{"jsonrpc":"2.0","id":`)
	writeID(&buf, id)
	buf.WriteString(`,"method":`)
	if err := writeCall(&buf, method, params); err != nil {
		return nil
	}
	return buf.Bytes()
}

// writeCall writes the method, the params when not nil, and the closing
// brace.
func writeCall(buf *bytes.Buffer, method string, params any) error {
	if err := writeValue(buf, method); err != nil {
		return err
	}
	if params != nil {
		buf.WriteString(`,"params":`)
		if err := writeValue(buf, params); err != nil {
			return err
		}
	}
	buf.WriteByte('}')
	return nil
}

func writeID(buf *bytes.Buffer, id json.RawMessage) {
	if id == nil {
		buf.Write(null)
		return
	}
	buf.Write(id)
}

// writeValue appends v as JSON. On error nothing is appended, because
// json.Encoder writes only a completely encoded value.
func writeValue(buf *bytes.Buffer, v any) error {
	if raw, ok := v.(json.RawMessage); ok && len(raw) > 0 {
		if !json.Valid(raw) {
			return errInvalidRaw
		}
		buf.Write(raw)
		return nil
	}

	enc := json.NewEncoder(buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return err
	}
	buf.Truncate(buf.Len() - 1) // Encode ends every value with a newline
	return nil
}
