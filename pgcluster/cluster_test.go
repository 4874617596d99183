package pgcluster_test

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/pgsidecar/sidecar/pgcluster"
)

// startCluster starts a cluster that the test's cleanup closes. Without
// PostgreSQL binaries the test is skipped, or fails when CI=true.
func startCluster(t *testing.T, opts pgcluster.Options) *pgcluster.Cluster {
	t.Helper()

	if _, err := pgcluster.FindBinaries(); errors.Is(err, pgcluster.ErrBinariesNotFound) {
		if os.Getenv("CI") == "true" {
			t.Fatal(err)
		}
		t.Skip(err)
	}

	c, err := pgcluster.Start(t.Context(), opts)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return c
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

func exec(t *testing.T, url, sql string) {
	t.Helper()
	conn := connect(t, url)
	if _, err := conn.Exec(t.Context(), sql); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	conn.Close(t.Context())
}

func queryString(t *testing.T, url, sql string) string {
	t.Helper()
	conn := connect(t, url)
	defer conn.Close(t.Context())

	var s string
	if err := conn.QueryRow(t.Context(), sql).Scan(&s); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return s
}

func assertRefused(t *testing.T, url string) {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), url)
	if err == nil {
		conn.Close(t.Context())
		t.Fatalf("connect to %s succeeded, want an error because the server is down", url)
	}
}

func TestFindBinaries(t *testing.T) {
	dir, err := pgcluster.FindBinaries()
	if errors.Is(err, pgcluster.ErrBinariesNotFound) && os.Getenv("CI") != "true" {
		t.Skip(err)
	}
	if err != nil {
		t.Fatalf("FindBinaries() error = %v", err)
	}

	for _, name := range []string{"initdb", "postgres"} {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			t.Errorf("FindBinaries() = %q, which has no %s: %v", dir, name, err)
		}
	}
}

func TestStartAcceptsConnections(t *testing.T) {
	t.Parallel()
	c := startCluster(t, pgcluster.Options{})

	want := "postgres://postgres@127.0.0.1:" + strconv.Itoa(c.Port()) + "/postgres?sslmode=disable"
	if got := c.URL("postgres"); got != want {
		t.Errorf("URL(postgres) = %q, want %q", got, want)
	}

	settings := map[string]string{
		"SHOW fsync":              "off",
		"SHOW synchronous_commit": "off",
		"SHOW full_page_writes":   "off",
		"SHOW listen_addresses":   "127.0.0.1",
		"SHOW max_connections":    "200",
		"SHOW server_encoding":    "UTF8",
		"SHOW lc_collate":         "C",
		"SELECT current_user":     "postgres",
	}
	for sql, want := range settings {
		if got := queryString(t, c.URL("postgres"), sql); got != want {
			t.Errorf("%s = %q, want %q", sql, got, want)
		}
	}
}

func TestDurableKeepsDefaults(t *testing.T) {
	t.Parallel()
	c := startCluster(t, pgcluster.Options{Durable: true})

	for _, sql := range []string{"SHOW fsync", "SHOW synchronous_commit", "SHOW full_page_writes"} {
		if got := queryString(t, c.URL("postgres"), sql); got != "on" {
			t.Errorf("%s = %q, want on", sql, got)
		}
	}
}

func TestStopThenRestartKeepsData(t *testing.T) {
	t.Parallel()
	c := startCluster(t, pgcluster.Options{})
	url := c.URL("postgres")
	exec(t, url, "CREATE TABLE kept AS SELECT 'before stop' AS note")

	if err := c.Stop(t.Context()); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	assertRefused(t, url)
	if err := c.Stop(t.Context()); err != nil {
		t.Errorf("second Stop = %v, want nil", err)
	}

	if err := c.Restart(t.Context()); err != nil {
		t.Fatalf("Restart: %v", err)
	}
	if got := queryString(t, url, "SELECT note FROM kept"); got != "before stop" {
		t.Errorf("note after restart = %q, want %q", got, "before stop")
	}
}

func TestKillThenRestartRecovers(t *testing.T) {
	t.Parallel()
	c := startCluster(t, pgcluster.Options{Durable: true})
	url := c.URL("postgres")
	exec(t, url, "CREATE TABLE committed AS SELECT generate_series(1, 1000) AS n")

	// An open session must not keep the old server's shared memory alive
	// and block the restart.
	idle := connect(t, url)

	if err := c.Kill(); err != nil {
		t.Fatalf("Kill: %v", err)
	}
	assertRefused(t, url)
	if err := idle.Ping(t.Context()); err == nil {
		t.Error("ping on a session opened before Kill succeeded, want an error")
	}

	if err := c.Restart(t.Context()); err != nil {
		t.Fatalf("Restart after Kill: %v", err)
	}
	if got := queryString(t, url, "SELECT count(*)::text FROM committed"); got != "1000" {
		t.Errorf("rows after crash recovery = %s, want 1000", got)
	}
}

func TestKillWhenStopped(t *testing.T) {
	t.Parallel()
	c := startCluster(t, pgcluster.Options{})
	if err := c.Stop(t.Context()); err != nil {
		t.Fatalf("Stop: %v", err)
	}

	if err := c.Kill(); !errors.Is(err, pgcluster.ErrNotRunning) {
		t.Errorf("Kill after Stop = %v, want ErrNotRunning", err)
	}
}

func TestRestartWhileRunning(t *testing.T) {
	t.Parallel()
	c := startCluster(t, pgcluster.Options{})

	if err := c.Restart(t.Context()); err == nil {
		t.Error("Restart while running = nil, want an error")
	}
	if got := queryString(t, c.URL("postgres"), "SELECT 'still up'"); got != "still up" {
		t.Errorf("query after rejected Restart = %q, want %q", got, "still up")
	}
}

func TestCloseRemovesTemporaryRoot(t *testing.T) {
	t.Parallel()
	c := startCluster(t, pgcluster.Options{})
	root := filepath.Dir(c.DataDir())
	url := c.URL("postgres")

	if err := c.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}

	if _, err := os.Stat(root); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stat data root %s after Close: %v, want not exist", root, err)
	}
	assertRefused(t, url)
	if err := c.Close(); err != nil {
		t.Errorf("second Close = %v, want nil", err)
	}
	if err := c.Restart(t.Context()); err == nil {
		t.Error("Restart after Close = nil, want an error")
	}
}

func TestCloseKeepsGivenDir(t *testing.T) {
	t.Parallel()
	dir := traversableTempDir(t)

	first := startCluster(t, pgcluster.Options{Dir: dir})
	exec(t, first.URL("postgres"), "CREATE TABLE kept AS SELECT 'first run' AS note")
	if err := first.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if _, err := os.Stat(first.LogFile()); err != nil {
		t.Errorf("server log after Close: %v, want it kept", err)
	}

	second := startCluster(t, pgcluster.Options{Dir: dir})
	if got := queryString(t, second.URL("postgres"), "SELECT note FROM kept"); got != "first run" {
		t.Errorf("note in reused Dir = %q, want %q", got, "first run")
	}
}

func TestStartFailsOnTakenPort(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	port := l.Addr().(*net.TCPAddr).Port

	if _, err := pgcluster.FindBinaries(); err != nil {
		t.Skip(err)
	}
	c, err := pgcluster.Start(t.Context(), pgcluster.Options{Port: port})
	if err == nil {
		c.Close()
		t.Fatalf("Start on taken port %d succeeded, want an error", port)
	}
	if !strings.Contains(err.Error(), "Address already in use") {
		t.Errorf("Start on taken port: error %q does not quote the server log", err)
	}
}

// traversableTempDir returns a test directory that the account postgres
// runs as can reach when the tests run as root: t.TempDir creates its
// directories with mode 0700.
func traversableTempDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for _, d := range []string{filepath.Dir(dir), dir} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return filepath.Join(dir, "cluster")
}
