// Package migrations holds the sidecar's SQL migrations, embedded in the
// binary, and applies them with goose.
//
// Everything lives in the schema realtime: the goose version table is
// realtime.goose_version and the advisory lock id is the sidecar's own, so
// the application's own goose migrations never contend with these.
package migrations

import "embed"

// FS contains the migration files.
//
//go:embed *.sql
var FS embed.FS
