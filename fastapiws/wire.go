// Package fastapiws encodes and decodes the wire format of the Python
// libraries fastapi_websocket_rpc and fastapi_websocket_pubsub, so that the
// sidecar can serve their clients and share their Postgres backbone.
//
// Every message is a JSON object with a request member, a response member,
// or both:
//
//	{"request": {"method": "subscribe", "arguments": {"topics": ["a"]}, "call_id": "s1"}, "response": null}
//	{"request": null, "response": {"result": true, "result_type": "bool", "call_id": "s1"}}
//
// Arguments are keyword arguments only. Strict clients (pydantic v2)
// require result and result_type in every response and a string call_id,
// so the encoders always write them.
package fastapiws

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
)

// AllTopics is the topic that subscribes to every topic.
const AllTopics = "__EventNotifier_ALL_TOPICS__"

// MaxClientMessage is the largest message their Python client accepts by
// default (the websockets library's max_size, 1 MiB); a larger one makes
// it close the connection.
const MaxClientMessage = 1 << 20

// Message is one decoded message. Request and Response are nil when the
// member is absent or null.
type Message struct {
	Request  *Request
	Response *Response
}

// Request is the request member of a message.
type Request struct {
	Method string
	// Arguments is the arguments object, or nil when it is absent or null.
	Arguments json.RawMessage
	// CallID is the caller's id, and HasCallID false when it was absent or
	// null. A number is accepted and kept as its text.
	CallID    string
	HasCallID bool
}

// Response is the response member of a message.
type Response struct {
	Result     json.RawMessage // null when absent
	ResultType string
	CallID     string
	HasCallID  bool
	// Error is the sidecar's extension member, which their clients ignore.
	Error *Error
}

// Error describes why a request failed. The sidecar sends it as an extra
// member of the response, next to a result that their clients can read.
type Error struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
}

type wireMessage struct {
	Request  json.RawMessage `json:"request"`
	Response json.RawMessage `json:"response"`
}

type wireRequest struct {
	Method    *string         `json:"method"`
	Arguments json.RawMessage `json:"arguments"`
	CallID    json.RawMessage `json:"call_id"`
}

type wireResponse struct {
	Result     json.RawMessage `json:"result"`
	ResultType json.RawMessage `json:"result_type"`
	CallID     json.RawMessage `json:"call_id"`
	Error      *Error          `json:"error"`
}

// ErrInvalid is wrapped by Decode's errors for messages that are JSON but
// not of the protocol's shape.
var ErrInvalid = errors.New("not a request or response of the fastapi_websocket_rpc protocol")

var null = []byte("null")

// Decode decodes one message. It returns an error that wraps ErrInvalid
// for a JSON value of the wrong shape, and another error for invalid JSON.
func Decode(b []byte) (Message, error) {
	var w wireMessage
	if err := json.Unmarshal(b, &w); err != nil {
		var syntax *json.SyntaxError
		if errors.As(err, &syntax) {
			return Message{}, fmt.Errorf("invalid JSON at byte %d: %w", syntax.Offset, err)
		}
		return Message{}, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if bytes.TrimSpace(b)[0] != '{' {
		return Message{}, fmt.Errorf("%w: a message must be a JSON object", ErrInvalid)
	}

	var m Message
	if present(w.Request) {
		var r wireRequest
		if err := json.Unmarshal(w.Request, &r); err != nil || r.Method == nil {
			return Message{}, fmt.Errorf(`%w: "request" must be an object with a string "method"`, ErrInvalid)
		}
		req := &Request{Method: *r.Method}
		if present(r.Arguments) {
			if bytes.TrimSpace(r.Arguments)[0] != '{' {
				return Message{}, fmt.Errorf(`%w: "arguments" must be an object of keyword arguments`, ErrInvalid)
			}
			req.Arguments = r.Arguments
		}
		id, ok, err := callID(r.CallID)
		if err != nil {
			return Message{}, err
		}
		req.CallID, req.HasCallID = id, ok
		m.Request = req
	}
	if present(w.Response) {
		var r wireResponse
		if err := json.Unmarshal(w.Response, &r); err != nil {
			return Message{}, fmt.Errorf(`%w: "response" must be an object`, ErrInvalid)
		}
		resp := &Response{Result: r.Result, Error: r.Error}
		if !present(resp.Result) {
			resp.Result = null
		}
		if present(r.ResultType) {
			_ = json.Unmarshal(r.ResultType, &resp.ResultType)
		}
		id, ok, err := callID(r.CallID)
		if err != nil {
			return Message{}, err
		}
		resp.CallID, resp.HasCallID = id, ok
		m.Response = resp
	}
	if m.Request == nil && m.Response == nil {
		return Message{}, fmt.Errorf(`%w: it has neither "request" nor "response"`, ErrInvalid)
	}
	return m, nil
}

func present(raw json.RawMessage) bool {
	return len(raw) > 0 && !bytes.Equal(bytes.TrimSpace(raw), null)
}

// callID reads a call_id: a string, a number kept as its text, or absent.
func callID(raw json.RawMessage) (string, bool, error) {
	if !present(raw) {
		return "", false, nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		return s, true, nil
	}
	var n json.Number
	if err := json.Unmarshal(raw, &n); err == nil {
		return n.String(), true, nil
	}
	return "", false, fmt.Errorf(`%w: "call_id" must be a string`, ErrInvalid)
}

// EncodeRequest encodes a request. arguments must be a JSON object, and
// nil encodes as {}.
func EncodeRequest(method string, arguments json.RawMessage, callID string) []byte {
	if len(arguments) == 0 {
		arguments = json.RawMessage("{}")
	}
	b := make([]byte, 0, 96+len(method)+len(arguments)+len(callID))
	b = append(b, `{"request":{"method":`...)
	b = strconv.AppendQuote(b, method)
	b = append(b, `,"arguments":`...)
	b = append(b, arguments...)
	b = append(b, `,"call_id":`...)
	b = appendString(b, callID)
	return append(b, `},"response":null}`...)
}

// EncodeResponse encodes a response with result, whose result_type is
// derived from its JSON type unless resultType is given. A non-nil e is
// added as the error member.
func EncodeResponse(callID string, result json.RawMessage, resultType string, e *Error) []byte {
	if len(result) == 0 {
		result = null
	}
	if resultType == "" {
		resultType = ResultType(result)
	}
	b := make([]byte, 0, 96+len(result)+len(callID))
	b = append(b, `{"request":null,"response":{"result":`...)
	b = append(b, result...)
	b = append(b, `,"result_type":`...)
	b = appendString(b, resultType)
	b = append(b, `,"call_id":`...)
	b = appendString(b, callID)
	if e != nil {
		enc, _ := json.Marshal(e)
		b = append(b, `,"error":`...)
		b = append(b, enc...)
	}
	return append(b, `}}`...)
}

// appendString appends s as a JSON string without HTML escaping.
func appendString(b []byte, s string) []byte {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(s)
	return append(b, bytes.TrimRight(buf.Bytes(), "\n")...)
}

// ResultType returns the Python type name that their servers put in
// result_type for a result of raw's JSON type.
func ResultType(raw json.RawMessage) string {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 {
		return "None"
	}
	switch c := raw[0]; {
	case c == '"':
		return "str"
	case c == 't', c == 'f':
		return "bool"
	case c == 'n':
		return "None"
	case c == '{':
		return "dict"
	case c == '[':
		return "list"
	case bytes.ContainsAny(raw, ".eE"):
		return "float"
	default:
		return "int"
	}
}

// EncodeNotification encodes the arguments of notify for an event on topic
// with data, which is copied unchanged: encoding/json would escape <, >
// and & inside it, six bytes each, and a payload that fits the client's
// limit could then exceed it.
func EncodeNotification(subscriptionID, subscriberID, topic string, data json.RawMessage) json.RawMessage {
	if len(data) == 0 {
		data = null
	}
	b := make([]byte, 0, 128+len(subscriptionID)+len(subscriberID)+len(topic)+len(data))
	b = append(b, `{"subscription":{"id":`...)
	b = appendString(b, subscriptionID)
	b = append(b, `,"subscriber_id":`...)
	b = appendString(b, subscriberID)
	b = append(b, `,"topic":`...)
	b = appendString(b, topic)
	b = append(b, `,"notifier_id":null},"data":`...)
	b = append(b, data...)
	return append(b, '}')
}

// EncodeBackbone encodes a message of their broadcast channel for one
// topic, with data copied unchanged.
func EncodeBackbone(notifierID, topic string, data json.RawMessage) []byte {
	if len(data) == 0 {
		data = null
	}
	b := make([]byte, 0, 64+len(notifierID)+len(topic)+len(data))
	b = append(b, `{"notifier_id":`...)
	b = appendString(b, notifierID)
	b = append(b, `,"topics":[`...)
	b = appendString(b, topic)
	b = append(b, `],"data":`...)
	b = append(b, data...)
	return append(b, '}')
}

// BackboneMessage is one message of their servers' broadcast channel
// (EventNotifier by default): one topic per message in practice.
type BackboneMessage struct {
	NotifierID string          `json:"notifier_id"`
	Topics     []string        `json:"topics"`
	Data       json.RawMessage `json:"data"`
}
