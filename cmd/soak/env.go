package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgsidecar/sidecar/auth"
	"github.com/pgsidecar/sidecar/pgcluster"
)

// Application names that the sidecars' Postgres sessions carry, so that
// the soak can find their LISTEN sessions in pg_stat_activity.
const (
	listenAppPrefix = "soak-listen-"
	poolAppPrefix   = "soak-pool-"
)

// environment is the system under test: a durable Postgres cluster, the
// sidecar instances on its one database, and the secrets to reach them.
// Close stops all of it.
type environment struct {
	dir       string // work directory: Postgres data and logs, sidecar logs
	cluster   *pgcluster.Cluster
	dbURL     string // the database, directly, as the superuser
	jwtSecret []byte
	apiKey    string
	sidecars  []*sidecarSlot
	postgres  postgresInfo
}

// postgresInfo describes the server for the report.
type postgresInfo struct {
	Version           string `json:"version"`
	Fsync             string `json:"fsync"`
	SynchronousCommit string `json:"synchronous_commit"`
}

// setUp starts the cluster and cfg.Sidecars sidecar processes, each with
// its LISTEN connection through a proxy of its own. The caller must call
// Close, also when setUp fails part way, which it reports by returning a
// non-nil environment with the error.
func setUp(ctx context.Context, cfg config, progress func(string, ...any)) (*environment, error) {
	dir, err := os.MkdirTemp("", "sidecar-soak-")
	if err != nil {
		return nil, fmt.Errorf("create work directory: %w", err)
	}
	e := &environment{dir: dir}

	// When the soak runs as root, Postgres runs as another account, which
	// must be able to enter the work directory.
	if err := os.Chmod(dir, 0o755); err != nil {
		return e, fmt.Errorf("open work directory to the Postgres account: %w", err)
	}

	progress("starting a durable Postgres cluster in %s", dir)
	e.cluster, err = pgcluster.Start(ctx, pgcluster.Options{Dir: filepath.Join(dir, "postgres"), Durable: true})
	if err != nil {
		return e, fmt.Errorf("start Postgres: %w", err)
	}
	e.dbURL = e.cluster.URL("postgres")
	if err := e.describePostgres(ctx); err != nil {
		return e, err
	}

	bin := cfg.SidecarBin
	if bin == "" {
		progress("building the sidecar (go build %s)", sidecarPackage)
		if bin, err = buildSidecar(ctx, dir); err != nil {
			return e, err
		}
	}

	e.jwtSecret = []byte(randomHex(32))
	e.apiKey = "soak-" + randomHex(12)
	for i := range cfg.Sidecars {
		slot, err := e.newSidecarSlot(i, bin)
		if err != nil {
			return e, err
		}
		e.sidecars = append(e.sidecars, slot)

		progress("starting %s on %s, its LISTEN connection through %s", slot.name(), slot.addr, slot.proxy.Addr())
		if err := slot.start(ctx); err != nil {
			return e, err
		}
	}
	return e, nil
}

// newSidecarSlot picks the address of sidecar i and starts the proxy for
// its LISTEN connection.
func (e *environment) newSidecarSlot(i int, bin string) (*sidecarSlot, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	px, err := newProxy(net.JoinHostPort("127.0.0.1", strconv.Itoa(e.cluster.Port())), nil)
	if err != nil {
		return nil, err
	}

	slot := &sidecarSlot{
		index:   i,
		addr:    net.JoinHostPort("127.0.0.1", strconv.Itoa(port)),
		bin:     bin,
		logPath: filepath.Join(e.dir, fmt.Sprintf("sidecar-%d.log", i)),
		proxy:   px,
	}
	slot.env = []string{
		"DATABASE_URL=" + e.dbURL + "&application_name=" + poolAppPrefix + strconv.Itoa(i),
		"SIDECAR_LISTEN_DATABASE_URL=postgres://postgres@" + px.Addr() + "/postgres?sslmode=disable&application_name=" + listenAppPrefix + strconv.Itoa(i),
		"SIDECAR_JWT_SECRET=" + string(e.jwtSecret),
		"SIDECAR_API_KEYS=" + e.apiKey,
	}
	return slot, nil
}

// describePostgres reads the server version and the durability settings.
func (e *environment) describePostgres(ctx context.Context) error {
	conn, err := pgx.Connect(ctx, e.dbURL)
	if err != nil {
		return fmt.Errorf("connect to Postgres: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))

	err = conn.QueryRow(ctx, `SELECT current_setting('server_version'), current_setting('fsync'), current_setting('synchronous_commit')`).
		Scan(&e.postgres.Version, &e.postgres.Fsync, &e.postgres.SynchronousCommit)
	if err != nil {
		return fmt.Errorf("read Postgres settings: %w", err)
	}
	return nil
}

// signToken signs a client token that may subscribe and publish below
// topicPrefix for ttl.
func (e *environment) signToken(subject string, ttl time.Duration) (string, error) {
	patterns := []string{topicPrefix + ">"}
	token, err := auth.Sign(e.jwtSecret, subject, auth.Realtime{Subscribe: patterns, Publish: patterns}, ttl)
	if err != nil {
		return "", fmt.Errorf("sign token for %s: %w", subject, err)
	}
	return token, nil
}

// Close stops the sidecars, their proxies and Postgres, in that order.
// It removes the work directory unless keep is set.
func (e *environment) Close(keep bool) error {
	var errs []error
	for _, s := range e.sidecars {
		errs = append(errs, s.terminate(), s.proxy.Close())
	}
	if e.cluster != nil {
		errs = append(errs, e.cluster.Close())
	}
	if !keep {
		errs = append(errs, os.RemoveAll(e.dir))
	}
	return errors.Join(errs...)
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
// Another process may take it before the sidecar binds it, in which case
// the sidecar exits and its start fails.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // crypto/rand.Read never returns an error
	return hex.EncodeToString(b)
}
