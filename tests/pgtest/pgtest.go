// Package pgtest gives integration tests a real PostgreSQL server: one per
// test binary, with a migrated template database that each test clones.
//
// Use Main as the package's TestMain and NewDatabase in each test:
//
//	func TestMain(m *testing.M) { pgtest.Main(m) }
//
//	func TestSomething(t *testing.T) {
//		url := pgtest.NewDatabase(t)
//		...
//	}
//
// The environment variable SIDECAR_TEST_PG chooses the server:
//
//   - auto (the default) tries, in order, a Docker engine (the postgres:15
//     image), a throwaway cluster from the local initdb and postgres
//     binaries, and SIDECAR_TEST_DATABASE_URL.
//   - docker, local or url uses only that backend and fails if it cannot.
//
// SIDECAR_TEST_DATABASE_URL is an existing server whose role may create
// databases. There, every database the run creates has a name that starts
// with a per-run id, and the run drops only those databases.
//
// When no backend is available, tests that call NewDatabase or NewCluster
// are skipped with the reason, unless CI=true, where Main fails instead.
//
// Notifications are scoped to a database in PostgreSQL, so parallel tests
// on separate databases never receive each other's notifications.
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgsidecar/sidecar/db/migrations"
)

// templateName is the migrated database that NewDatabase clones, after the
// per-run prefix.
const templateName = "sidecar_template"

// setupTimeout bounds Main's start-up, which may include pulling a Docker
// image.
const setupTimeout = 5 * time.Minute

// State that Main sets before m.Run and only reads afterwards.
var (
	mainStarted bool
	current     *server
	admin       *pgxpool.Pool // connections to the maintenance database
	template    string        // name of the migrated template
	unavailable error         // why no backend is available; tests skip
)

// Main is the whole TestMain of an integration test package. It starts or
// connects to the server, creates and migrates the template, runs the
// tests, drops what it created, stops the server, and exits with the code
// of m.Run. With CI=true it exits 1 when no backend is available. A backend
// that was found but failed, a backend forced by SIDECAR_TEST_PG that is
// unavailable, and a failed migration always make it exit 1.
func Main(m *testing.M) {
	os.Exit(run(m))
}

// run does Main's work and returns the exit code, so that its deferred
// cleanup runs before os.Exit.
func run(m *testing.M) int {
	mainStarted = true

	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()

	s, err := startServer(ctx)
	if errors.Is(err, errNoBackend) && !inCI() {
		fmt.Fprintf(os.Stderr, "pgtest: database tests will be skipped: %v\n", err)
		unavailable = err
		return m.Run()
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "pgtest: start PostgreSQL: %v\n", err)
		return 1
	}
	current = s
	defer func() {
		if err := s.close(); err != nil {
			fmt.Fprintf(os.Stderr, "pgtest: stop PostgreSQL: %v\n", err)
		}
	}()

	if err := prepare(ctx, s); err != nil {
		fmt.Fprintf(os.Stderr, "pgtest: %v\n", err)
		return 1
	}
	defer cleanUp()

	return m.Run()
}

// prepare opens the admin pool, prints the backend and version, and
// creates the migrated template.
func prepare(ctx context.Context, s *server) error {
	cfg, err := pgxpool.ParseConfig(s.adminURL)
	if err != nil {
		return fmt.Errorf("parse admin URL: %w", err)
	}
	cfg.MaxConns = 4

	admin, err = pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return fmt.Errorf("connect to %s: %w", s.describe(), err)
	}

	var version string
	if err := admin.QueryRow(ctx, "SHOW server_version").Scan(&version); err != nil {
		return fmt.Errorf("read server version: %w", err)
	}
	fmt.Fprintf(os.Stderr, "pgtest: %s, PostgreSQL %s\n", s.describe(), version)

	template = s.namePrefix + templateName
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+quote(template)); err != nil {
		return fmt.Errorf("create template database %s: %w", template, err)
	}

	if err := migrations.Up(ctx, s.databaseURL(template), migrationLogger()); err != nil {
		return fmt.Errorf("migrate template database %s: %w", template, err)
	}

	// CREATE DATABASE fails while any session is connected to its template,
	// so close the template to connections and end any session left over.
	if _, err := admin.Exec(ctx, "ALTER DATABASE "+quote(template)+" WITH ALLOW_CONNECTIONS false"); err != nil {
		return fmt.Errorf("close template database %s to connections: %w", template, err)
	}
	_, err = admin.Exec(ctx, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", template)
	if err != nil {
		return fmt.Errorf("end sessions on template database %s: %w", template, err)
	}
	return nil
}

// cleanUp drops the template where the server outlives the run, and closes
// the admin pool. A server that the run owns is thrown away whole.
func cleanUp() {
	defer admin.Close()

	if current.backend != backendURL {
		return
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := admin.Exec(ctx, "DROP DATABASE IF EXISTS "+quote(template)+" WITH (FORCE)"); err != nil {
		fmt.Fprintf(os.Stderr, "pgtest: drop template database %s: %v\n", template, err)
	}
}

// NewDatabase creates a database cloned from the migrated template and
// returns its URL. The test's cleanup drops it, ending any session still
// connected. It is safe to call from parallel tests. It skips the test
// when no backend is available, and fails it when the package's TestMain
// is not Main.
func NewDatabase(t testing.TB) (url string) {
	t.Helper()
	requireServer(t)

	name := current.namePrefix + "t_" + randomHex(8)
	if _, err := admin.Exec(t.Context(), "CREATE DATABASE "+quote(name)+" TEMPLATE "+quote(template)); err != nil {
		t.Fatalf("pgtest: create database %s from %s: %v", name, template, err)
	}

	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := admin.Exec(ctx, "DROP DATABASE IF EXISTS "+quote(name)+" WITH (FORCE)"); err != nil {
			t.Errorf("pgtest: drop database %s: %v", name, err)
		}
	})

	return current.databaseURL(name)
}

// Backend returns the backend in use: "docker", "local", "url", or "none"
// when none is available or Main has not run.
func Backend() string {
	if current == nil {
		return backendNone
	}
	return current.backend
}

// requireServer fails the test without Main, and skips it without a
// backend.
func requireServer(t testing.TB) {
	t.Helper()
	if !mainStarted {
		t.Fatal("pgtest: the package's TestMain must call pgtest.Main")
	}
	if unavailable != nil {
		t.Skipf("pgtest: %v (Main printed why at start-up); install postgresql or set %s", errNoBackend, urlEnv)
	}
}

// inCI reports whether CI is set to a true value, as CI services set it.
func inCI() bool {
	ci, _ := strconv.ParseBool(os.Getenv("CI"))
	return ci
}

// migrationLogger sends warnings and errors from migrations to stderr.
func migrationLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

func quote(name string) string {
	return pgx.Identifier{name}.Sanitize()
}

// randomHex returns 2n random hexadecimal digits.
func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // crypto/rand.Read never returns an error.
	return hex.EncodeToString(b)
}
