package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

const (
	// sidecarPackage is built when --sidecar-bin is not given. go build
	// resolves it from the module of the working directory.
	sidecarPackage = "github.com/pgsidecar/sidecar/cmd/sidecar"

	// readyTimeout bounds the wait for a sidecar's /readyz to return 200.
	readyTimeout = 60 * time.Second

	// stopTimeout is how long a stopping sidecar may drain before it is
	// killed.
	stopTimeout = 10 * time.Second
)

// sidecarProcess is a sidecar started by the benchmark as a child
// process, so that the load generator and the sidecar do not share a Go
// runtime.
type sidecarProcess struct {
	cmd     *exec.Cmd
	logPath string
	waited  chan struct{} // closed when cmd.Wait has returned
	waitErr error         // set before waited is closed
}

// buildSidecar builds the sidecar binary into dir and returns its path.
func buildSidecar(ctx context.Context, dir string) (string, error) {
	bin := filepath.Join(dir, "sidecar")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, sidecarPackage)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build %s (run from the repository, or give --sidecar-bin): %w\n%s", sidecarPackage, err, out)
	}
	return bin, nil
}

// startSidecar starts bin as "sidecar serve" on a free loopback port, with
// extraArgs after the benchmark's own flags so that they override them, and
// waits until its /readyz returns 200. The process writes its log to
// logPath. It dies with the benchmark: the parent-death signal is SIGKILL.
// The caller must call stop.
func startSidecar(ctx context.Context, bin, databaseURL, jwtSecret, apiKey string, extraArgs []string, logPath string) (*sidecarProcess, string, error) {
	port, err := freePort()
	if err != nil {
		return nil, "", err
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))

	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, "", fmt.Errorf("create sidecar log: %w", err)
	}
	defer logFile.Close() // the child has its own copy of the descriptor

	// The secrets travel in the environment, not in arguments that any
	// user of the machine can read with ps.
	args := append([]string{"serve", "--addr", addr, "--log-level", "warn", "--drain-timeout", "2s"}, extraArgs...)
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(),
		"DATABASE_URL="+databaseURL,
		"SIDECAR_JWT_SECRET="+jwtSecret,
		"SIDECAR_API_KEYS="+apiKey,
	)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, "", fmt.Errorf("start %s: %w", bin, err)
	}

	p := &sidecarProcess{cmd: cmd, logPath: logPath, waited: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.waited)
	}()

	base := "http://" + addr
	if err := p.waitReady(ctx, base); err != nil {
		p.stop()
		return nil, "", fmt.Errorf("sidecar on %s: %w\n%s", addr, err, p.logTail())
	}
	return p, base, nil
}

// waitReady polls base/readyz until it returns 200, the process exits,
// ctx ends or readyTimeout passes.
func (p *sidecarProcess) waitReady(ctx context.Context, base string) error {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()

	httpClient := &http.Client{Timeout: 2 * time.Second}
	poll := time.NewTicker(50 * time.Millisecond)
	defer poll.Stop()
	for {
		if ready(ctx, httpClient, base) {
			return nil
		}
		select {
		case <-p.waited:
			return fmt.Errorf("exited before it was ready: %v", p.waitErr)
		case <-ctx.Done():
			return fmt.Errorf("not ready within %s: %w", readyTimeout, ctx.Err())
		case <-poll.C:
		}
	}
}

// ready reports whether base/readyz returns 200.
func ready(ctx context.Context, httpClient *http.Client, base string) bool {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/readyz", nil)
	if err != nil {
		return false
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// stop sends SIGTERM, waits up to stopTimeout for the drain, then kills
// the process. It returns an error when the sidecar had to be killed or
// exited with an error.
func (p *sidecarProcess) stop() error {
	select {
	case <-p.waited:
		return p.exitError()
	default:
	}

	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("signal sidecar: %w", err)
	}
	select {
	case <-p.waited:
		return p.exitError()
	case <-time.After(stopTimeout):
		_ = p.cmd.Process.Kill()
		<-p.waited
		return fmt.Errorf("sidecar did not stop within %s of SIGTERM and was killed", stopTimeout)
	}
}

func (p *sidecarProcess) exitError() error {
	if p.waitErr != nil {
		return fmt.Errorf("sidecar exited: %w\n%s", p.waitErr, p.logTail())
	}
	return nil
}

// logTail returns the last lines of the sidecar's log, for error messages.
func (p *sidecarProcess) logTail() string {
	const maxBytes = 2000
	out, err := os.ReadFile(p.logPath)
	if err != nil {
		return "(no sidecar log: " + err.Error() + ")"
	}
	out = bytes.TrimSpace(out)
	if len(out) == 0 {
		return "(the sidecar log is empty)"
	}
	if len(out) > maxBytes {
		out = out[len(out)-maxBytes:]
	}
	return "sidecar log (" + p.logPath + "):\n" + string(out)
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
// Another process may take it before the sidecar binds it, in which case
// the sidecar exits and startSidecar reports its log.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}
