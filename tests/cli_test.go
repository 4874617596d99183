package tests

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	osexec "os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/pgsidecar/sidecar/tests/pgtest"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// sidecarBinary builds cmd/sidecar once per test run.
func sidecarBinary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "sidecar-bin-")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "sidecar")
		out, err := osexec.Command("go", "build", "-o", binPath, "github.com/pgsidecar/sidecar/cmd/sidecar").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

func freeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// command runs the sidecar binary with env added to a clean environment.
func command(t testing.TB, env []string, args ...string) *osexec.Cmd {
	t.Helper()
	cmd := osexec.Command(sidecarBinary(t), args...)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.TempDir()}, env...)
	return cmd
}

func TestCommandLineWalkThrough(t *testing.T) {
	db := pgtest.NewDatabase(t)
	addr := freeAddr(t)
	env := []string{
		"DATABASE_URL=" + db,
		"SIDECAR_ADDR=" + addr,
		"SIDECAR_JWT_SECRET=" + testSecret,
		"SIDECAR_API_KEYS=" + testAPIKey,
		"SIDECAR_URL=http://" + addr,
		"SIDECAR_WS_URL=ws://" + addr + "/v1/ws",
		"SIDECAR_TOKEN=" + token(t, "cli", []string{">", "db.>"}, nil),
	}

	serve := command(t, env, "serve", "--log-format", "json")
	var serveLog syncBuffer
	serve.Stderr = &serveLog
	if err := serve.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { serve.Process.Kill(); serve.Wait() })

	waitFor(t, "sidecar health to pass", func() bool {
		return command(t, env, "health", "http://"+addr).Run() == nil
	})

	status, err := command(t, env, "migrate", "status").CombinedOutput()
	if err != nil || !strings.Contains(string(status), "00001_realtime.sql") || strings.Contains(string(status), "pending") {
		t.Fatalf("migrate status: %v\n%s", err, status)
	}

	sql := connect(t, db)
	exec(t, sql, `CREATE TABLE todos (id serial PRIMARY KEY, title text)`)
	exec(t, sql, `CREATE TRIGGER rt AFTER INSERT OR UPDATE OR DELETE ON todos FOR EACH ROW EXECUTE FUNCTION realtime.notify_changes()`)

	sub := command(t, env, "sub", "db.public.todos", "chat.>")
	stdout, err := sub.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var subLog syncBuffer
	sub.Stderr = &subLog
	if err := sub.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sub.Process.Kill(); sub.Wait() })
	lines := make(chan string, 16)
	go func() {
		sc := bufio.NewScanner(stdout)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	waitFor(t, "sidecar sub to subscribe", func() bool { return strings.Contains(subLog.String(), "subscribed") })

	exec(t, sql, `INSERT INTO todos (title) VALUES ('buy milk')`)
	line := nextLine(t, lines)
	var ev struct {
		Topic string    `json:"topic"`
		ID    int64     `json:"id"`
		Data  rowChange `json:"data"`
	}
	if err := json.Unmarshal([]byte(line), &ev); err != nil || ev.Topic != "db.public.todos" || ev.Data.New["title"] != "buy milk" || ev.ID == 0 {
		t.Fatalf("sidecar sub printed %q (err %v), want the INSERT of buy milk with an id", line, err)
	}

	out, err := command(t, env, "pub", "chat.room1", `{"text": "hello"}`).CombinedOutput()
	if err != nil || !strings.Contains(string(out), `"id"`) {
		t.Fatalf("sidecar pub: %v\n%s", err, out)
	}
	if line := nextLine(t, lines); !strings.Contains(line, `"chat.room1"`) || !strings.Contains(line, `"hello"`) {
		t.Fatalf("sidecar sub printed %q, want the chat.room1 event", line)
	}

	t.Run("SIGTERM closes websockets with 1012 and exits 0", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), waitLong)
		defer cancel()
		ws, _, err := websocket.Dial(ctx, "ws://"+addr+"/v1/ws?access_token="+token(t, "d", []string{"a"}, nil), nil)
		if err != nil {
			t.Fatal(err)
		}
		defer ws.CloseNow()
		if _, _, err := ws.Read(ctx); err != nil { // welcome
			t.Fatal(err)
		}

		if err := serve.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		_, _, err = ws.Read(ctx)
		if code := websocket.CloseStatus(err); code != websocket.StatusServiceRestart {
			t.Fatalf("close code after SIGTERM = %v (err %v), want 1012", code, err)
		}

		done := make(chan error, 1)
		go func() { done <- serve.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("sidecar serve exited with %v after SIGTERM, want 0\n%s", err, serveLog.String())
			}
		case <-time.After(waitLong):
			t.Fatal("sidecar serve did not exit after SIGTERM")
		}
		if strings.Contains(serveLog.String(), testSecret) {
			t.Fatal("the server log contains the JWT secret")
		}
	})
}

func nextLine(t testing.TB, lines <-chan string) string {
	t.Helper()
	select {
	case l, ok := <-lines:
		if !ok {
			t.Fatal("sidecar sub exited")
		}
		return l
	case <-time.After(waitLong):
		t.Fatal("sidecar sub printed nothing in time")
	}
	return ""
}

// syncBuffer collects a child process's output while the test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestCommandLineSubStopsOnRejectedToken(t *testing.T) {
	db := pgtest.NewDatabase(t)
	sc := startSidecar(t, db)

	cmd := command(t, []string{"SIDECAR_WS_URL=" + sc.ws}, "sub", "--token", tokenWithSecret(t, "another secret"), "a.>")
	done := make(chan struct{})
	var out []byte
	var err error
	go func() {
		out, err = cmd.CombinedOutput()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(waitLong):
		_ = cmd.Process.Kill()
		<-done
		t.Fatalf("sidecar sub with a rejected token still runs after %s, want it to stop:\n%s", waitLong, out)
	}
	if err == nil || !strings.Contains(string(out), "rejected the token") || !strings.Contains(string(out), "--token") {
		t.Fatalf("sidecar sub with a rejected token = %v:\n%s\nwant a failure that says the token was rejected and how to give another", err, out)
	}
}
