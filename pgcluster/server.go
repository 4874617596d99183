package pgcluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// ErrNotRunning is returned by Kill when the server is not running.
var ErrNotRunning = errors.New("postgres is not running")

// errPortInUse marks a start that failed because the port was taken.
var errPortInUse = errors.New("port already in use")

// serverProcess is one run of postgres. A goroutine started by launch waits
// for the process and closes done when it has exited; err is valid after
// that.
type serverProcess struct {
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

func (p *serverProcess) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// signalGroup sends sig to postgres and every backend it forked, which
// share its process group.
func (p *serverProcess) signalGroup(sig syscall.Signal) error {
	err := syscall.Kill(-p.cmd.Process.Pid, sig)
	if errors.Is(err, syscall.ESRCH) {
		return nil
	}
	return err
}

// killBackends sends SIGKILL to every process whose working directory is
// dataDir (Postgres processes run there) until none is left. It reads
// /proc, so it works on Linux only.
func killBackends(dataDir string, timeout time.Duration) error {
	if resolved, err := filepath.EvalSymlinks(dataDir); err == nil {
		dataDir = resolved
	}
	deadline := time.Now().Add(timeout)
	for {
		pids := processesIn(dataDir)
		if len(pids) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("postgres processes %v still running %s after SIGKILL", pids, timeout)
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// processesIn lists the processes whose working directory is dir.
func processesIn(dir string) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if cwd, err := os.Readlink("/proc/" + e.Name() + "/cwd"); err == nil && cwd == dir {
			pids = append(pids, pid)
		}
	}
	return pids
}

// serverArgs returns the postgres command line.
func (c *Cluster) serverArgs() []string {
	args := []string{
		"-D", c.dataDir,
		"-p", strconv.Itoa(c.port),
		"-c", "listen_addresses=127.0.0.1",
		"-c", "unix_socket_directories=" + c.socketDir,
		"-c", "max_connections=" + strconv.Itoa(maxConnections),
	}
	if !c.durable {
		args = append(args,
			"-c", "fsync=off",
			"-c", "synchronous_commit=off",
			"-c", "full_page_writes=off",
		)
	}
	return args
}

// startServer launches postgres and waits until it accepts connections. If
// it does not, startServer kills it and returns an error with the end of
// the server log.
func (c *Cluster) startServer(ctx context.Context) error {
	logOffset := c.logSize()

	p, err := c.launch()
	if err != nil {
		return err
	}

	if err := c.waitReady(ctx, p, logOffset); err != nil {
		_ = p.signalGroup(syscall.SIGKILL)
		<-p.done
		return err
	}

	c.server = p
	c.logger.Info("postgres started", "port", c.port, "data_dir", c.dataDir, "pid", p.cmd.Process.Pid)
	return nil
}

// launch starts postgres as a direct child, never through pg_ctl, which
// would detach it. The parent-death signal kills it if this process dies
// without stopping it, and its own process group lets Kill reach its
// backends too and keeps a terminal's Ctrl-C from reaching it directly.
func (c *Cluster) launch() (*serverProcess, error) {
	logFile, err := os.OpenFile(c.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open server log: %w", err)
	}
	// The child gets its own copy of the descriptor.
	defer logFile.Close()

	cmd := exec.Command(filepath.Join(c.bindir, "postgres"), c.serverArgs()...)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.Env = serverEnv()
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Credential: c.account.credential(),
		Pdeathsig:  syscall.SIGKILL,
		Setpgid:    true,
	}

	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start postgres%s: %w", c.account.describe(), err)
	}

	p := &serverProcess{cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// waitReady retries a connection every 50 ms until one succeeds, the
// process exits, ctx ends or readyTimeout passes.
func (c *Cluster) waitReady(ctx context.Context, p *serverProcess, logOffset int64) error {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()

	// A connection attempt can hang on whatever else listens on the port, so the
	// attempt in flight is cancelled as soon as the process exits.
	pingCtx, cancelPing := context.WithCancel(ctx)
	defer cancelPing()
	go func() {
		select {
		case <-p.done:
			cancelPing()
		case <-pingCtx.Done():
		}
	}()

	ticker := time.NewTicker(50 * time.Millisecond)
	defer ticker.Stop()

	for {
		err := ping(pingCtx, c.URL("postgres"))
		if err == nil {
			return nil
		}

		select {
		case <-p.done:
			log := c.readLog(logOffset)
			exitErr := fmt.Errorf("postgres on port %d exited during start-up (%v); see %s:\n%s", c.port, p.err, c.logPath, tail([]byte(log)))
			if strings.Contains(log, "Address already in use") {
				return fmt.Errorf("%w: %w", errPortInUse, exitErr)
			}
			return exitErr
		case <-ctx.Done():
			return fmt.Errorf("postgres on port %d did not accept connections (%w); last error: %v; see %s:\n%s",
				c.port, context.Cause(ctx), err, c.logPath, tail([]byte(c.readLog(logOffset))))
		case <-ticker.C:
		}
	}
}

// ping opens and closes one connection.
func ping(ctx context.Context, url string) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()

	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return err
	}
	return conn.Close(ctx)
}

// logSize returns the current size of the server log, where the output of
// the next start begins.
func (c *Cluster) logSize() int64 {
	info, err := os.Stat(c.logPath)
	if err != nil {
		return 0
	}
	return info.Size()
}

// readLog returns the server log from offset on, or a note when it cannot
// be read.
func (c *Cluster) readLog(offset int64) string {
	f, err := os.Open(c.logPath)
	if err != nil {
		return fmt.Sprintf("(server log unreadable: %v)", err)
	}
	defer f.Close()

	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return fmt.Sprintf("(server log unreadable: %v)", err)
	}
	b, err := io.ReadAll(f)
	if err != nil {
		return fmt.Sprintf("(server log unreadable: %v)", err)
	}
	return string(b)
}

// Stop shuts the server down with a fast shutdown (SIGINT): sessions are
// disconnected and the server writes a checkpoint. If the server has not
// exited when ctx ends or after 30 s, Stop kills it and returns an error.
// The data directory stays, so Restart can start the server again. Stop on
// a server that is not running returns nil.
func (c *Cluster) Stop(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stopLocked(ctx)
}

func (c *Cluster) stopLocked(ctx context.Context) error {
	p := c.server
	if p == nil {
		return nil
	}
	c.server = nil

	if p.exited() {
		c.logger.Warn("postgres had already exited", "port", c.port, "error", p.err)
		return nil
	}

	if err := p.cmd.Process.Signal(syscall.SIGINT); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("signal postgres to stop: %w", err)
	}

	timer := time.NewTimer(stopTimeout)
	defer timer.Stop()

	var reason string
	select {
	case <-p.done:
		c.logger.Info("postgres stopped", "port", c.port)
		return nil
	case <-ctx.Done():
		reason = context.Cause(ctx).Error()
	case <-timer.C:
		reason = "timed out after " + stopTimeout.String()
	}

	_ = p.signalGroup(syscall.SIGKILL)
	<-p.done
	c.logger.Warn("postgres killed after its fast shutdown did not finish", "port", c.port, "reason", reason)
	return fmt.Errorf("fast shutdown of postgres on port %d did not finish (%s), so it was killed; see %s", c.port, reason, c.logPath)
}

// Kill sends SIGKILL to the server and its backends and waits for the
// server to exit, which simulates a crash: Restart then runs crash
// recovery. Without Options.Durable, commits acknowledged shortly before
// the kill can be lost. Kill returns ErrNotRunning when the server is not
// running.
func (c *Cluster) Kill() error {
	c.mu.Lock()
	defer c.mu.Unlock()

	p := c.server
	if p == nil || c.closed {
		return ErrNotRunning
	}
	c.server = nil

	if err := p.signalGroup(syscall.SIGKILL); err != nil {
		return fmt.Errorf("kill postgres: %w", err)
	}
	<-p.done

	// Each backend makes itself a process group leader, so the signal
	// above reached only the postmaster. A crash takes every process
	// down, and a backend left alive keeps the shared memory attached:
	// a restart then fails with "pre-existing shared memory block is
	// still in use".
	if err := killBackends(c.dataDir, 10*time.Second); err != nil {
		return err
	}

	c.logger.Info("postgres killed", "port", c.port)
	return nil
}

// Restart starts the server again on the same port and data directory after
// Stop or Kill (or after it exited by itself), and waits until it accepts
// connections. It returns an error if the server is running or the
// cluster is closed.
func (c *Cluster) Restart(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()

	if c.closed {
		return errors.New("restart postgres: cluster is closed")
	}
	if c.server != nil {
		if !c.server.exited() {
			return fmt.Errorf("restart postgres on port %d: already running", c.port)
		}
		c.logger.Warn("postgres had exited by itself", "port", c.port, "error", c.server.err)
		c.server = nil
	}

	return c.startServer(ctx)
}
