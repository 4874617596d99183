package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/pgsidecar/sidecar/pgcluster"
)

// target is the Postgres and sidecar that the scenarios load, with what
// the benchmark needs to reach them.
type target struct {
	DatabaseURL string
	WSURL       string
	HTTPURL     string
	JWTSecret   []byte
	APIKey      string

	// SidecarPID is the sidecar's process id, for reading its memory use
	// from /proc. It is 0 when unknown: a running sidecar given without
	// --sidecar-pid.
	SidecarPID int
	// DebugURL is the base URL of the profiling endpoints of a sidecar
	// that the benchmark started, such as http://127.0.0.1:6060, or empty.
	DebugURL string

	// Setup describes the target for the report.
	Setup setup

	closers []func() error // run in reverse order by Close

	// The sidecar process that the benchmark started, and what
	// restartSidecar needs to start it again. sidecar is nil for a
	// sidecar that was already running.
	sidecar     *sidecarProcess
	sidecarBin  string
	sidecarArgs []string
	sidecarDir  string
}

// setup is the report's description of where the figures come from.
type setup struct {
	Postgres          string `json:"postgres"`
	PostgresVersion   string `json:"postgres_version"`
	Fsync             string `json:"fsync"`
	SynchronousCommit string `json:"synchronous_commit"`
	Sidecar           string `json:"sidecar"`
	CPUs              int    `json:"cpus"`
	GoVersion         string `json:"go_version"`
}

// setUpTarget starts what cfg does not name: a throwaway Postgres cluster
// with its default durability settings, and a sidecar process built from
// this repository. progress receives one line per slow step. The caller
// must call Close, also when setUpTarget fails part way, which it
// reports by returning a non-nil target with the error.
func setUpTarget(ctx context.Context, cfg config, progress func(string, ...any)) (*target, error) {
	t := &target{
		DatabaseURL: cfg.DatabaseURL,
		WSURL:       cfg.WSURL,
		HTTPURL:     cfg.HTTPURL,
		JWTSecret:   []byte(cfg.JWTSecret),
		APIKey:      cfg.APIKey,
		Setup:       setup{CPUs: runtime.NumCPU(), GoVersion: runtime.Version()},
	}

	t.Setup.Postgres = "given by --database-url"
	if t.DatabaseURL == "" {
		progress("starting a throwaway Postgres cluster with its default durability settings")
		cluster, err := pgcluster.Start(ctx, pgcluster.Options{Durable: true})
		if err != nil {
			return t, fmt.Errorf("start Postgres: %w", err)
		}
		t.closers = append(t.closers, cluster.Close)
		t.DatabaseURL = cluster.URL("postgres")
		t.Setup.Postgres = "throwaway cluster on 127.0.0.1 started by the benchmark, default durability settings"
	}
	if err := t.describePostgres(ctx); err != nil {
		return t, err
	}

	if cfg.external() {
		t.Setup.Sidecar = "already running at " + t.HTTPURL
		t.SidecarPID = cfg.SidecarPID
		return t, nil
	}
	if err := t.startSidecar(ctx, cfg.SidecarBin, cfg.SidecarArgs, progress); err != nil {
		return t, err
	}
	return t, nil
}

// startSidecar builds the sidecar unless bin is given, and runs it with a
// fresh JWT secret and API key, and with extraArgs.
func (t *target) startSidecar(ctx context.Context, bin string, extraArgs []string, progress func(string, ...any)) error {
	dir, err := os.MkdirTemp("", "sidecar-bench-")
	if err != nil {
		return fmt.Errorf("create temporary directory: %w", err)
	}
	t.closers = append(t.closers, func() error { return os.RemoveAll(dir) })

	if bin == "" {
		progress("building the sidecar (go build %s)", sidecarPackage)
		bin, err = buildSidecar(ctx, dir)
		if err != nil {
			return err
		}
	}

	t.JWTSecret = []byte(randomHex(32))
	t.APIKey = "bench-" + randomHex(12)
	t.sidecarBin, t.sidecarArgs, t.sidecarDir = bin, extraArgs, dir
	t.closers = append(t.closers, t.stopSidecar)
	progress("starting the sidecar process")
	if err := t.launchSidecar(ctx); err != nil {
		return err
	}

	t.Setup.Sidecar = fmt.Sprintf("separate process (%s) at %s", bin, t.HTTPURL)
	if len(extraArgs) > 0 {
		t.Setup.Sidecar += " with " + strings.Join(extraArgs, " ")
	}
	return nil
}

// launchSidecar starts the sidecar process and points the target's URLs
// and SidecarPID at it.
func (t *target) launchSidecar(ctx context.Context) error {
	// The profiling endpoints let the idle scenario read the Go runtime's
	// memory figures, unless --sidecar-flag chose the address itself.
	args, debugURL := t.sidecarArgs, ""
	if !slices.ContainsFunc(args, func(a string) bool {
		return strings.HasPrefix(a, "--debug-addr") || strings.HasPrefix(a, "-debug-addr")
	}) {
		port, err := freePort()
		if err != nil {
			return err
		}
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		args = append([]string{"--debug-addr=" + addr}, args...)
		debugURL = "http://" + addr
	}

	proc, base, err := startSidecar(ctx, t.sidecarBin, t.DatabaseURL, string(t.JWTSecret), t.APIKey, args, t.sidecarDir+"/sidecar.log")
	if err != nil {
		return err
	}
	t.DebugURL = debugURL
	t.sidecar = proc
	t.SidecarPID = proc.cmd.Process.Pid
	t.HTTPURL = base
	t.WSURL = "ws" + base[len("http"):] + "/v1/ws"
	return nil
}

// stopSidecar stops the sidecar process that the benchmark started, if
// any.
func (t *target) stopSidecar() error {
	if t.sidecar == nil {
		return nil
	}
	err := t.sidecar.stop()
	t.sidecar = nil
	return err
}

// canRestartSidecar reports whether the benchmark started the sidecar, so
// that restartSidecar can replace it.
func (t *target) canRestartSidecar() bool {
	return t.sidecarBin != ""
}

// restartSidecar stops the sidecar that the benchmark started and starts
// a new process with the same binary, flags and secrets, on a new port.
func (t *target) restartSidecar(ctx context.Context) error {
	if err := t.stopSidecar(); err != nil {
		return fmt.Errorf("stop sidecar before restart: %w", err)
	}
	if err := t.launchSidecar(ctx); err != nil {
		return fmt.Errorf("restart sidecar: %w", err)
	}
	return nil
}

// describePostgres reads the server version and the durability settings
// that matter for commit latency into the report.
func (t *target) describePostgres(ctx context.Context) error {
	conn, err := pgx.Connect(ctx, t.DatabaseURL)
	if err != nil {
		return fmt.Errorf("connect to Postgres: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))

	err = conn.QueryRow(ctx, `SELECT current_setting('server_version'), current_setting('fsync'), current_setting('synchronous_commit')`).
		Scan(&t.Setup.PostgresVersion, &t.Setup.Fsync, &t.Setup.SynchronousCommit)
	if err != nil {
		return fmt.Errorf("read Postgres settings: %w", err)
	}
	return nil
}

// Close stops what setUpTarget started, the sidecar before Postgres.
func (t *target) Close() error {
	var errs []error
	for i := len(t.closers) - 1; i >= 0; i-- {
		errs = append(errs, t.closers[i]())
	}
	t.closers = nil
	return errors.Join(errs...)
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // crypto/rand.Read never returns an error
	return hex.EncodeToString(b)
}
