package client

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	"github.com/coder/websocket"
)

var (
	// ErrClosed reports that the connection has ended. Every error that
	// Conn.Err returns, and every call on an ended connection, matches it
	// with errors.Is. After Conn.Close, the error is ErrClosed itself.
	ErrClosed = errors.New("connection closed")

	// ErrIdleTimeout is the cause of a connection that the client closed
	// because it received nothing, not even a heartbeat, within
	// Options.IdleTimeout.
	ErrIdleTimeout = errors.New("no message from the sidecar within the idle timeout")

	// ErrRemoved is returned by Subscription.Err when the sidecar removed
	// the subscription, because a token passed to Conn.Auth no longer
	// allows its patterns.
	ErrRemoved = errors.New("subscription removed because the new token no longer allows it")
)

// JSON-RPC error codes that the sidecar sends.
const (
	CodeParseError       = -32700
	CodeInvalidRequest   = -32600
	CodeMethodNotFound   = -32601
	CodeInvalidParams    = -32602
	CodeInternal         = -32603
	CodeNotAuthenticated = -32001
	CodeForbidden        = -32003
	CodeRateLimited      = -32004
	CodeAppCallFailed    = -32005
	CodeHistoryExpired   = -32006
)

// RPCError is a JSON-RPC error object, as received in an error response or
// returned by a Handler. Data is the peer's data member verbatim, nil when
// absent.
type RPCError struct {
	Code    int             `json:"code"`
	Message string          `json:"message"`
	Data    json.RawMessage `json:"data,omitempty"`
}

// Error returns the message followed by the code.
func (e *RPCError) Error() string {
	return fmt.Sprintf("%s (json-rpc error %d)", e.Message, e.Code)
}

// HandshakeError is the error Dial returns when the sidecar responds to the
// upgrade request with an HTTP status other than 101, for example 401 for
// an invalid token or 503 while the sidecar is draining. Code and Message
// come from the sidecar's JSON error body and are empty when the body has
// another form.
type HandshakeError struct {
	StatusCode int
	Code       string
	Message    string
}

// Error returns the HTTP status and, when known, the sidecar's message.
func (e *HandshakeError) Error() string {
	status := fmt.Sprintf("%d %s", e.StatusCode, http.StatusText(e.StatusCode))
	if e.Message == "" {
		return "websocket upgrade rejected with HTTP " + status
	}
	return fmt.Sprintf("websocket upgrade rejected with HTTP %s: %s", status, e.Message)
}

// newHandshakeError parses body, the start of a rejected upgrade's response
// body, as the sidecar's {"error": {"code", "message"}} form.
func newHandshakeError(status int, body []byte) *HandshakeError {
	var parsed struct {
		Error struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	_ = json.Unmarshal(body, &parsed) // any other body leaves Code and Message empty
	return &HandshakeError{StatusCode: status, Code: parsed.Error.Code, Message: parsed.Error.Message}
}

// closedError is the error of an ended connection: ErrClosed, with the
// reason as its cause.
type closedError struct {
	cause error
}

func (e *closedError) Error() string {
	return "connection closed: " + e.cause.Error()
}

func (e *closedError) Is(target error) bool {
	return target == ErrClosed
}

func (e *closedError) Unwrap() error {
	return e.cause
}

// CloseStatus returns the websocket close code carried by err, such as 1008,
// 1012 or 1013 from the sidecar, or -1 when err carries none: the connection
// was closed by this client, dropped without a close frame, or err is nil.
func CloseStatus(err error) websocket.StatusCode {
	return websocket.CloseStatus(err)
}
