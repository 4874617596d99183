// Package jsclient embeds the browser client of the sidecar, so that Go
// programs can serve it. The demo page of "sidecar dev" loads it from
// /client.js.
package jsclient

import _ "embed"

// Source is the client's ES module, src/index.js, as published.
//
//go:embed src/index.js
var Source []byte
