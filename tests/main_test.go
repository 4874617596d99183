// Package tests holds the sidecar's end-to-end tests. They run real
// sidecar servers in-process against a real Postgres (see tests/pgtest)
// and talk to them over loopback, as clients and applications do.
package tests

import (
	"testing"

	"github.com/pgsidecar/sidecar/tests/pgtest"
)

func TestMain(m *testing.M) {
	pgtest.Main(m)
}
