package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"time"
)

const (
	// sidecarPackage is built when --sidecar-bin is not given. go build
	// resolves it from the module of the working directory.
	sidecarPackage = "github.com/pgsidecar/sidecar/cmd/sidecar"

	// readyTimeout bounds the wait for a starting sidecar's /readyz to
	// return 200.
	readyTimeout = 60 * time.Second

	// termTimeout is how long a SIGTERM may take before the process is
	// killed: twice the sidecar's default --drain-timeout of 15 s.
	termTimeout = 30 * time.Second
)

// sidecarArgs are the serve flags of every sidecar besides its address.
// Everything else keeps its default, slow-client limits included, so that
// the soak tests the sidecar as it ships.
var sidecarArgs = []string{"--log-level", "info"}

// sidecarSlot is one sidecar instance: a fixed address, the proxy its
// LISTEN connection goes through, and the process currently serving, if
// any. Restarts keep the address, so clients find it again. Its methods
// are safe for concurrent use.
type sidecarSlot struct {
	index   int
	addr    string // 127.0.0.1:PORT
	bin     string
	env     []string // secrets and database URLs, kept out of the process list
	logPath string
	proxy   *proxy

	mu     sync.Mutex
	proc   *process // nil while stopped
	starts int
}

func (s *sidecarSlot) name() string { return "sidecar-" + strconv.Itoa(s.index) }

// httpURL returns the base URL of the instance.
func (s *sidecarSlot) httpURL() string { return "http://" + s.addr }

// wsURL returns the websocket URL of the instance.
func (s *sidecarSlot) wsURL() string { return "ws://" + s.addr + "/v1/ws" }

// process is one run of a sidecar binary.
type process struct {
	cmd     *exec.Cmd
	waited  chan struct{} // closed when cmd.Wait has returned
	waitErr error         // set before waited is closed
}

// start runs the sidecar and waits until /readyz returns 200. It fails
// when a process is already running.
func (s *sidecarSlot) start(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()

	if s.proc != nil {
		return fmt.Errorf("start %s: already running", s.name())
	}
	s.starts++

	logFile, err := os.OpenFile(s.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("open log of %s: %w", s.name(), err)
	}
	defer logFile.Close() // the child has its own copy of the descriptor
	fmt.Fprintf(logFile, "--- soak: start %d of %s at %s\n", s.starts, s.name(), time.Now().Format(time.RFC3339Nano))

	args := append([]string{"serve", "--addr", s.addr}, sidecarArgs...)
	cmd := exec.Command(s.bin, args...)
	cmd.Env = append(os.Environ(), s.env...)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	// The sidecar dies with the soak, even when the soak is killed.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", s.name(), err)
	}

	p := &process{cmd: cmd, waited: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.waited)
	}()
	s.proc = p

	if err := p.waitReady(ctx, s.httpURL()); err != nil {
		_ = cmd.Process.Kill()
		<-p.waited
		s.proc = nil
		return fmt.Errorf("%s on %s: %w (see %s)", s.name(), s.addr, err, s.logPath)
	}
	return nil
}

// kill sends SIGKILL and waits for the process to exit.
func (s *sidecarSlot) kill() error {
	p := s.take()
	if p == nil {
		return fmt.Errorf("kill %s: not running", s.name())
	}
	if err := p.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("kill %s: %w", s.name(), err)
	}
	<-p.waited
	return nil
}

// terminate sends SIGTERM and waits for the drain to finish. After
// termTimeout it kills the process and returns an error.
func (s *sidecarSlot) terminate() error {
	p := s.take()
	if p == nil {
		return nil
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("signal %s: %w", s.name(), err)
	}

	timer := time.NewTimer(termTimeout)
	defer timer.Stop()
	select {
	case <-p.waited:
		if p.waitErr != nil {
			return fmt.Errorf("%s exited after SIGTERM: %w (see %s)", s.name(), p.waitErr, s.logPath)
		}
		return nil
	case <-timer.C:
		_ = p.cmd.Process.Kill()
		<-p.waited
		return fmt.Errorf("%s did not exit within %s of SIGTERM and was killed (see %s)", s.name(), termTimeout, s.logPath)
	}
}

// take removes the current process from the slot and returns it, or nil.
func (s *sidecarSlot) take() *process {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.proc
	s.proc = nil
	return p
}

// waitReady polls base/readyz until it returns 200, the process exits,
// ctx ends or readyTimeout passes.
func (p *process) waitReady(ctx context.Context, base string) error {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()

	httpClient := &http.Client{Timeout: 2 * time.Second}
	poll := time.NewTicker(50 * time.Millisecond)
	defer poll.Stop()
	for {
		if isReady(ctx, httpClient, base) {
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

// isReady reports whether base/readyz returns 200.
func isReady(ctx context.Context, httpClient *http.Client, base string) bool {
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

// buildSidecar builds the sidecar binary into dir and returns its path.
func buildSidecar(ctx context.Context, dir string) (string, error) {
	bin := dir + "/sidecar"
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, sidecarPackage)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build %s (run from the repository, or give --sidecar-bin): %w\n%s", sidecarPackage, err, out)
	}
	return bin, nil
}
