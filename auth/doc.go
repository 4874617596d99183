// Package auth checks who may connect and what they may do.
//
// Clients present a JWT (Verifier.Verify) whose "realtime" claim lists the
// topic patterns they may subscribe and publish to, the application
// methods they may call and the presence topics they may use. Verify
// returns these rights as Claims. Anonymous builds the Claims of clients
// without a token, when the operator allows them.
//
// TokenFromRequest finds a client's token in an HTTP request, and RedactURL
// hides it from logs. APIKeys checks the keys of the application's HTTP API.
package auth
