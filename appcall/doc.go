// Package appcall forwards a client's app.<name> calls to the application.
//
// A Forwarder sends each call as one JSON-RPC 2.0 POST to the application's
// URL (--app-rpc-url) and returns the application's result or error
// unchanged. Every other outcome, such as a refused connection, a timeout, a
// non-2xx status or a body that is not a JSON-RPC response to the call,
// becomes a -32005 error whose message names which of them happened.
//
// Client notifications are forwarded as JSON-RPC notifications. Their
// failures cannot be reported to the client, so they are only logged.
//
// New validates the configuration. Forward is safe for concurrent use and
// reuses keep-alive connections across calls. Close releases idle
// connections at shutdown.
package appcall
