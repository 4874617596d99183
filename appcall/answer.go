package appcall

import (
	"bytes"
	"encoding/json"
	"strconv"

	"github.com/pgsidecar/sidecar/rpc"
)

// notResponse starts every message about a response body that is not a
// JSON-RPC response to the call.
const notResponse = "application's answer is not a JSON-RPC response: "

// decodeResponse decodes the application's response body to the request
// with the given id. It returns a -32005 failure unless the body is a single
// JSON-RPC response whose id equals id.
func decodeResponse(body []byte, id json.RawMessage) (rpc.Message, *rpc.Error) {
	trimmed := bytes.TrimSpace(body)
	switch {
	case len(trimmed) == 0:
		return rpc.Message{}, failed(notResponse + "the body is empty")
	case trimmed[0] == '[':
		return rpc.Message{}, failed(notResponse + "the body is a JSON array, a batch, but the request was a single call")
	}

	msg, rerr := rpc.Decode(trimmed)
	if rerr != nil {
		return rpc.Message{}, failed(notResponse+"%s", rerr.Message)
	}
	if msg.Kind != rpc.KindResponse {
		return rpc.Message{}, failed(notResponse+"the body is a JSON-RPC %s for method %q", msg.Kind, msg.Method)
	}

	if !sameID(msg.ID, id) {
		if msg.Error != nil {
			return rpc.Message{}, failed(notResponse+"its id %s does not match the request's id %s, and it carries error %d: %s", msg.ID, id, msg.Error.Code, msg.Error.Message)
		}
		return rpc.Message{}, failed(notResponse+"its id %s does not match the request's id %s", msg.ID, id)
	}
	return msg, nil
}

// sameID reports whether two JSON ids are the same value. Strings compare
// by their decoded text, so "a" equals "\u0061". Numbers compare by value,
// so 7 equals 7.0 and 7e0, because applications may re-encode the id.
func sameID(a, b json.RawMessage) bool {
	a, b = bytes.TrimSpace(a), bytes.TrimSpace(b)
	if bytes.Equal(a, b) {
		return true
	}
	if len(a) == 0 || len(b) == 0 {
		return false
	}

	switch {
	case a[0] == '"' && b[0] == '"':
		var sa, sb string
		if json.Unmarshal(a, &sa) != nil || json.Unmarshal(b, &sb) != nil {
			return false
		}
		return sa == sb
	case isNumber(a) && isNumber(b):
		return sameNumber(string(a), string(b))
	default:
		return false
	}
}

// sameNumber compares two JSON numbers exactly when both are integers that
// fit in int64, and as float64 values otherwise.
func sameNumber(a, b string) bool {
	ia, errA := strconv.ParseInt(a, 10, 64)
	ib, errB := strconv.ParseInt(b, 10, 64)
	if errA == nil && errB == nil {
		return ia == ib
	}

	fa, errA := strconv.ParseFloat(a, 64)
	fb, errB := strconv.ParseFloat(b, 64)
	return errA == nil && errB == nil && fa == fb
}

func isNumber(raw []byte) bool {
	c := raw[0]
	return c == '-' || c >= '0' && c <= '9'
}
