// Package rpc is the JSON-RPC 2.0 message layer of the websocket endpoint.
//
// Each websocket text message carries exactly one JSON-RPC object. Decode
// classifies such a message as a request, a notification or a response, or
// returns the *Error to send back. The sidecar and the client may both send
// requests, so responses from the client decode too.
//
// DecodeParams and CheckParams validate a request's params once the method is
// known. The order of checks is parse error, invalid request, method not
// found, then invalid params.
//
// The Encode functions build complete messages ready to be written to the
// socket. A request id is kept as raw JSON from Decode to EncodeResult or
// EncodeError, so a response echoes it byte for byte.
package rpc
