package pgcluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Options configures Start. The zero value starts a fast, non-durable
// cluster in a new temporary directory on a free loopback port.
type Options struct {
	// Dir is the data root, which contains the data directory "data" and the
	// server log "postgres.log". When Dir already contains an initialized data
	// directory, Start reuses it instead of running initdb. Close keeps a Dir
	// given here. Empty means a new temporary directory that Close removes.
	Dir string

	// Port is the TCP port on 127.0.0.1. Zero picks a free port.
	Port int

	// Durable keeps PostgreSQL's default durability settings. When false,
	// the server runs with fsync, synchronous_commit and full_page_writes
	// off, which is faster but means Kill can lose commits that were
	// already acknowledged. Use Durable for crash tests and for data that
	// should survive.
	Durable bool

	// Logger receives start, stop and kill events. Nil discards them.
	Logger *slog.Logger
}

// Cluster is a PostgreSQL server started by Start, running as a child of
// this process. Its methods are safe for concurrent use. Lifecycle calls
// (Stop, Kill, Restart, Close) are serialized.
//
// Start and Restart must not be called from a goroutine locked to its OS
// thread with runtime.LockOSThread: the parent-death signal fires when the
// thread that started the server exits, not when the process does.
type Cluster struct {
	bindir    string
	root      string // data root
	ownsRoot  bool   // Close removes root
	dataDir   string
	socketDir string // always created by Start and removed by Close
	logPath   string
	port      int
	durable   bool
	account   *serverAccount // nil: run as the current user
	logger    *slog.Logger

	mu     sync.Mutex
	server *serverProcess // nil after Stop, Kill or Close
	closed bool
}

const (
	// maxConnections is high enough for test suites that open a pool per
	// test database.
	maxConnections = 200

	// readyTimeout bounds how long Start and Restart wait for the server to
	// accept connections, crash recovery included.
	readyTimeout = 30 * time.Second

	// stopTimeout is how long Stop waits for a fast shutdown before it
	// kills the server, unless the context ends first.
	stopTimeout = 30 * time.Second

	// portAttempts is how many free ports Start tries when Options.Port is
	// zero, because another process can take a free port before postgres
	// binds it.
	portAttempts = 3
)

// Start creates a cluster with initdb (trust authentication, superuser
// postgres, UTF8, locale C) unless opts.Dir already contains one, then starts
// postgres and returns once it accepts connections. ctx bounds the start-up
// only; the server keeps running until Stop, Kill or Close. On error, Start
// removes what it created.
func Start(ctx context.Context, opts Options) (*Cluster, error) {
	bindir, err := FindBinaries()
	if err != nil {
		return nil, err
	}

	account, err := lookupServerAccount()
	if err != nil {
		return nil, err
	}

	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}

	c := &Cluster{
		bindir:  bindir,
		port:    opts.Port,
		durable: opts.Durable,
		account: account,
		logger:  logger,
	}

	if err := c.setUp(ctx, opts.Dir); err != nil {
		c.removeFiles()
		return nil, err
	}
	return c, nil
}

// setUp creates the directories, runs initdb when needed and starts the
// server.
func (c *Cluster) setUp(ctx context.Context, dir string) error {
	if err := c.makeDirs(dir); err != nil {
		return err
	}

	initialized, err := c.isInitialized()
	if err != nil {
		return err
	}
	if !initialized {
		if err := c.initdb(ctx); err != nil {
			return err
		}
	}

	if c.port != 0 {
		return c.startServer(ctx)
	}

	for attempt := 1; ; attempt++ {
		c.port, err = freePort()
		if err != nil {
			return err
		}

		err = c.startServer(ctx)
		if err == nil || !errors.Is(err, errPortInUse) || attempt == portAttempts {
			return err
		}
		c.logger.Warn("postgres port taken, trying another", "port", c.port)
	}
}

// makeDirs creates the data root (unless the caller gave one), the data
// directory and the socket directory, owned by the server account.
func (c *Cluster) makeDirs(dir string) error {
	if dir == "" {
		root, err := os.MkdirTemp("", "pgcluster-")
		if err != nil {
			return fmt.Errorf("create temporary data root: %w", err)
		}
		c.root, c.ownsRoot = root, true

		// The temporary root is private to root; the server account must be
		// able to enter it.
		if err := c.account.chown(root); err != nil {
			return err
		}
	} else {
		root, err := filepath.Abs(dir)
		if err != nil {
			return fmt.Errorf("resolve data root %q: %w", dir, err)
		}
		c.root = root

		// A root created here belongs to the server account. An existing one
		// is left as it is and only needs to be reachable by that account.
		if err := os.MkdirAll(filepath.Dir(root), 0o755); err != nil {
			return fmt.Errorf("create parent of data root: %w", err)
		}
		err = os.Mkdir(root, 0o700)
		if err == nil {
			err = c.account.chown(root)
		} else if errors.Is(err, os.ErrExist) {
			err = nil
		}
		if err != nil {
			return fmt.Errorf("create data root: %w", err)
		}
	}

	c.dataDir = filepath.Join(c.root, "data")
	c.logPath = filepath.Join(c.root, "postgres.log")

	if err := os.Mkdir(c.dataDir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("create data directory: %w", err)
	}
	if err := c.account.chown(c.dataDir); err != nil {
		return err
	}

	// A socket directory of its own, kept short because Unix socket paths
	// are limited to about 100 bytes.
	socketDir, err := os.MkdirTemp("", "pgcluster-socket-")
	if err != nil {
		return fmt.Errorf("create socket directory: %w", err)
	}
	c.socketDir = socketDir
	return c.account.chown(socketDir)
}

// isInitialized reports whether the data directory already contains a cluster.
func (c *Cluster) isInitialized() (bool, error) {
	_, err := os.Stat(filepath.Join(c.dataDir, "PG_VERSION"))
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("check data directory %s: %w", c.dataDir, err)
	}
	return true, nil
}

// initdb creates the cluster. Its output goes to the server log, and the
// end of it into the error.
func (c *Cluster) initdb(ctx context.Context) error {
	cmd := exec.CommandContext(ctx, filepath.Join(c.bindir, "initdb"),
		"-D", c.dataDir,
		"--no-sync",
		"-A", "trust",
		"-U", "postgres",
		"-E", "UTF8",
		"--locale=C",
	)
	cmd.Env = serverEnv()
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Credential: c.account.credential(),
		Pdeathsig:  syscall.SIGKILL,
	}

	start := time.Now()
	out, err := cmd.CombinedOutput()
	c.appendLog(out)
	if err != nil {
		return fmt.Errorf("initdb in %s%s: %w\n%s", c.dataDir, c.account.describe(), err, tail(out))
	}

	c.logger.Debug("initdb done", "data_dir", c.dataDir, "duration", time.Since(start))
	return nil
}

// appendLog adds initdb's output to the server log, best effort: the same
// output also reaches the caller in the error when initdb fails.
func (c *Cluster) appendLog(out []byte) {
	f, err := os.OpenFile(c.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		c.logger.Warn("open server log", "error", err)
		return
	}
	defer f.Close()

	if _, err := f.Write(out); err != nil {
		c.logger.Warn("write server log", "error", err)
	}
}

// URL returns the URL of the named database for the superuser postgres over
// TCP, without TLS: postgres://postgres@127.0.0.1:PORT/DATABASE?sslmode=disable.
func (c *Cluster) URL(database string) string {
	u := url.URL{
		Scheme:   "postgres",
		User:     url.User("postgres"),
		Host:     net.JoinHostPort("127.0.0.1", strconv.Itoa(c.port)),
		Path:     "/" + database,
		RawQuery: "sslmode=disable",
	}
	return u.String()
}

// Port returns the TCP port the server listens on, on 127.0.0.1.
func (c *Cluster) Port() int { return c.port }

// DataDir returns the server's data directory.
func (c *Cluster) DataDir() string { return c.dataDir }

// LogFile returns the path of the server log, which also contains initdb's
// output.
func (c *Cluster) LogFile() string { return c.logPath }

// Close stops the server as Stop does, then removes the socket directory
// and, unless Options.Dir was given, the data root. Later calls do nothing
// and return nil.
func (c *Cluster) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()

	if c.closed {
		return nil
	}
	c.closed = true

	stopErr := c.stopLocked(context.Background())
	return errors.Join(stopErr, c.removeFiles())
}

// removeFiles removes the socket directory and, when Start created it, the
// data root.
func (c *Cluster) removeFiles() error {
	var errs []error
	if c.socketDir != "" {
		if err := os.RemoveAll(c.socketDir); err != nil {
			errs = append(errs, fmt.Errorf("remove socket directory: %w", err))
		}
	}
	if c.ownsRoot {
		if err := os.RemoveAll(c.root); err != nil {
			errs = append(errs, fmt.Errorf("remove data root: %w", err))
		}
	}
	return errors.Join(errs...)
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port on 127.0.0.1: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// serverEnv returns this process's environment without PG* variables, which
// would otherwise change what initdb and postgres do.
func serverEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PG") {
			env = append(env, kv)
		}
	}
	return env
}

// tail returns the last lines of a log, enough to show why a server failed.
func tail(log []byte) string {
	const maxBytes = 4096
	log = bytes.TrimSpace(log)
	if len(log) > maxBytes {
		log = log[len(log)-maxBytes:]
		if i := bytes.IndexByte(log, '\n'); i >= 0 {
			log = log[i+1:]
		}
	}
	return string(log)
}
