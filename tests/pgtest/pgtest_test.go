package pgtest_test

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgsidecar/sidecar/tests/pgtest"
)

func TestMain(m *testing.M) {
	pgtest.Main(m)
}

func connect(t *testing.T, url string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), url)
	if err != nil {
		t.Fatalf("connect to %s: %v", url, err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func queryBool(t *testing.T, conn *pgx.Conn, sql string) bool {
	t.Helper()
	var b bool
	if err := conn.QueryRow(t.Context(), sql).Scan(&b); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return b
}

func TestBackend(t *testing.T) {
	got := pgtest.Backend()
	if !slices.Contains([]string{"docker", "local", "url", "none"}, got) {
		t.Errorf("Backend() = %q, want docker, local, url or none", got)
	}
}

func TestNewDatabaseIsMigrated(t *testing.T) {
	conn := connect(t, pgtest.NewDatabase(t))

	if !queryBool(t, conn, "SELECT to_regclass('realtime.goose_version') IS NOT NULL") {
		t.Fatal("realtime.goose_version is missing, want the migrated schema")
	}
	if !queryBool(t, conn, "SELECT max(version_id) > 0 FROM realtime.goose_version") {
		t.Error("realtime.goose_version records no applied migration")
	}
}

func TestNewDatabaseDistinct(t *testing.T) {
	first := pgtest.NewDatabase(t)
	second := pgtest.NewDatabase(t)
	if first == second {
		t.Fatalf("NewDatabase returned %q twice, want distinct URLs", first)
	}

	a, b := connect(t, first), connect(t, second)

	var nameA, nameB string
	if err := a.QueryRow(t.Context(), "SELECT current_database()").Scan(&nameA); err != nil {
		t.Fatal(err)
	}
	if err := b.QueryRow(t.Context(), "SELECT current_database()").Scan(&nameB); err != nil {
		t.Fatal(err)
	}
	if nameA == nameB {
		t.Errorf("current_database() = %q in both, want distinct databases", nameA)
	}

	if _, err := a.Exec(t.Context(), "CREATE TABLE only_in_first (n int)"); err != nil {
		t.Fatal(err)
	}
	if queryBool(t, b, "SELECT to_regclass('only_in_first') IS NOT NULL") {
		t.Error("table created in the first database is visible in the second")
	}
}

func TestNewDatabaseParallel(t *testing.T) {
	for _, name := range []string{"a", "b", "c", "d"} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			conn := connect(t, pgtest.NewDatabase(t))
			if !queryBool(t, conn, "SELECT to_regclass('realtime.goose_version') IS NOT NULL") {
				t.Error("realtime.goose_version is missing in a database created in parallel")
			}
		})
	}
}

func TestNewDatabaseDroppedAfterTest(t *testing.T) {
	var url string
	t.Run("create", func(t *testing.T) {
		url = pgtest.NewDatabase(t)
		// An open session must not keep the database from being dropped.
		connect(t, url)
	})
	if url == "" {
		t.Skip("no database was created")
	}

	conn, err := pgx.Connect(t.Context(), url)
	if err == nil {
		conn.Close(t.Context())
		t.Fatalf("connect to %s after its test ended succeeded, want the database dropped", url)
	}
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "3D000" {
		t.Errorf("connect after drop: %v, want SQLSTATE 3D000 (database does not exist)", err)
	}
}

func TestNewClusterSurvivesKill(t *testing.T) {
	c := pgtest.NewCluster(t)

	conn := connect(t, c.URL)
	if _, err := conn.Exec(t.Context(), "CREATE TABLE committed AS SELECT generate_series(1, 100) AS n"); err != nil {
		t.Fatal(err)
	}
	conn.Close(t.Context())

	if err := c.Kill(); err != nil {
		t.Fatalf("Kill: %v", err)
	}
	if err := c.Restart(t.Context()); err != nil {
		t.Fatalf("Restart: %v", err)
	}

	conn = connect(t, c.URL)
	var count int
	if err := conn.QueryRow(t.Context(), "SELECT count(*) FROM committed").Scan(&count); err != nil {
		t.Fatal(err)
	}
	if count != 100 {
		t.Errorf("rows after crash recovery = %d, want 100", count)
	}
	if !queryBool(t, conn, "SELECT to_regclass('realtime.goose_version') IS NOT NULL") {
		t.Error("realtime.goose_version is missing in the cluster's database")
	}
}
