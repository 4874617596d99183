package tests

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/url"
	"sync"
	"testing"

	"github.com/pgsidecar/sidecar/db/migrations"
	"github.com/pgsidecar/sidecar/tests/pgtest"
)

// emptyDatabase creates a database without the migrations, next to the
// migrated one that pgtest gives, and drops it after the test.
func emptyDatabase(t *testing.T) string {
	t.Helper()
	migrated := pgtest.NewDatabase(t)
	admin := connect(t, migrated)
	name := fmt.Sprintf("empty_%d", rand.Uint32())
	exec(t, admin, "CREATE DATABASE "+name)
	t.Cleanup(func() {
		_, _ = admin.Exec(context.Background(), "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
	})

	u, err := url.Parse(migrated)
	if err != nil {
		t.Fatal(err)
	}
	u.Path = "/" + name
	return u.String()
}

func TestConcurrentMigrationsApplyOnce(t *testing.T) {
	db := emptyDatabase(t)
	ctx := context.Background()

	var wg sync.WaitGroup
	errs := make([]error, 3)
	for i := range errs {
		wg.Go(func() { errs[i] = migrations.Up(ctx, db, testLogger(t)) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("migration run %d: %v", i, err)
		}
	}

	conn := connect(t, db)
	var applied, distinct int
	if err := conn.QueryRow(ctx, `SELECT count(*), count(DISTINCT version_id) FROM realtime.goose_version WHERE version_id > 0`).Scan(&applied, &distinct); err != nil {
		t.Fatal(err)
	}
	if applied != distinct {
		t.Fatalf("realtime.goose_version has %d applied rows for %d migrations, want each applied once", applied, distinct)
	}
	list, err := migrations.List(ctx, db, nil)
	if err != nil {
		t.Fatal(err)
	}
	if distinct != len(list) {
		t.Fatalf("%d migrations applied, want all %d", distinct, len(list))
	}
	var appGoose bool
	if err := conn.QueryRow(ctx, `SELECT to_regclass('public.goose_db_version') IS NOT NULL`).Scan(&appGoose); err != nil {
		t.Fatal(err)
	}
	if appGoose {
		t.Fatal("the migrations created public.goose_db_version, the application's own goose table")
	}
	exec(t, conn, `SELECT realtime.publish('after.migrate', '1')`)
}
