// Package client is a Go client for the sidecar's websocket endpoint,
// GET /v1/ws, which speaks JSON-RPC 2.0 with one message per text frame.
//
// Dial opens a connection and returns once the sidecar's welcome
// notification has arrived. The token can travel in the Authorization
// header, in the access_token query parameter, or in an auth request sent
// as the first message.
//
// A Conn has one reader goroutine. It matches responses to pending calls by
// request id, routes event notifications to the Subscription they name,
// records heartbeats and responds to requests from the sidecar through the
// handlers registered with Handle. Call, Publish, Subscribe and the other
// methods may be used from many goroutines at once.
//
// Each Subscription has a buffered channel of events. When a consumer stops
// draining its channel, the reader waits for it. This backpressure stalls
// the whole connection, so the sidecar eventually closes it as too slow
// (close code 1013), and no event is ever dropped silently.
//
// When the connection ends, every pending call fails at once and every
// Events channel is closed. Err and Subscription.Err report why, and
// CloseStatus extracts the websocket close code from those errors.
package client
