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
//
// Peer builds on these functions to run both ends of a connection on which
// either side may call the other. The owner's read loop passes every
// message to Peer.Receive, which never waits for a handler or a call.
// Handlers registered with Register or Handle run on their own goroutines,
// bounded per connection. Peer.Call matches responses to requests by id and
// fails with a timeout or when the Peer is closed. The Peer writes through
// a Send function, so it works over a websocket or an in-memory pipe.
package rpc
