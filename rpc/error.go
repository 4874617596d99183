package rpc

import "fmt"

// Error codes. The first five are defined by JSON-RPC 2.0; the others are
// the sidecar's own, in the range the specification reserves for servers.
const (
	CodeParseError     = -32700
	CodeInvalidRequest = -32600
	CodeMethodNotFound = -32601
	CodeInvalidParams  = -32602
	CodeInternal       = -32603

	CodeNotAuthenticated = -32001
	CodeForbidden        = -32003
	CodeRateLimited      = -32004
	CodeAppCallFailed    = -32005
	CodeHistoryExpired   = -32006
)

// Error is a JSON-RPC error object. Message is a plain sentence that names
// the value at fault. Data is optional and omitted from JSON when nil.
//
// In a response decoded by Decode, Data holds the peer's data member as a
// json.RawMessage, so that relaying the error preserves it.
type Error struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
	Data    any    `json:"data,omitempty"`
}

// Error returns the code and message, for logs.
func (e *Error) Error() string {
	return fmt.Sprintf("json-rpc error %d: %s", e.Code, e.Message)
}

// Errorf returns an *Error with the given code and a message formatted as
// by fmt.Sprintf.
func Errorf(code int, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// InvalidParams returns a -32602 error whose message is "invalid params: "
// followed by the formatted text.
func InvalidParams(format string, args ...any) *Error {
	return &Error{Code: CodeInvalidParams, Message: "invalid params: " + fmt.Sprintf(format, args...)}
}

// MethodNotFound returns a -32601 error that names method.
func MethodNotFound(method string) *Error {
	return Errorf(CodeMethodNotFound, "method %q not found", method)
}
