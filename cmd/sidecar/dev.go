package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgsidecar/sidecar/auth"
	"github.com/pgsidecar/sidecar/client"
	"github.com/pgsidecar/sidecar/pgcluster"
	"github.com/pgsidecar/sidecar/server"
)

// demoSchema is the demo's table: every change to it is published on
// db.public.todos by the row-change trigger.
const demoSchema = `
CREATE TABLE IF NOT EXISTS public.todos (
    id         bigserial PRIMARY KEY,
    title      text NOT NULL,
    done       boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE OR REPLACE TRIGGER todos_realtime
    AFTER INSERT OR UPDATE OR DELETE ON public.todos
    FOR EACH ROW EXECUTE FUNCTION realtime.notify_changes();
`

func runDev(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	cfg := server.Defaults()
	cfg.Version = version
	cfg.Addr = "127.0.0.1:7070"
	f := newEnvFlags("sidecar dev")
	format, level := serverFlags(f, &cfg)
	var dataDir string
	var demo bool
	f.fs.StringVar(&dataDir, "data-dir", "", "keep the throwaway Postgres cluster here (empty: a temporary directory removed on exit)")
	f.fs.BoolVar(&demo, "demo", true, "insert a row once ready and show it reaching a websocket subscriber")
	if err := parseFlags(f, args, getenv, stderr); err != nil {
		return err
	}
	logger, err := newLogger(stderr, *format, *level)
	if err != nil {
		return err
	}

	if cfg.DatabaseURL == "" {
		fmt.Fprintln(stdout, "Starting a throwaway Postgres cluster (no --database-url given)...")
		cluster, err := pgcluster.Start(ctx, pgcluster.Options{Dir: dataDir, Durable: true, Logger: logger.With("component", "pgcluster")})
		if err != nil {
			return fmt.Errorf("start local Postgres: %w", err)
		}
		defer func() {
			fmt.Fprintln(stdout, "Stopping the throwaway Postgres cluster.")
			_ = cluster.Close()
		}()
		cfg.DatabaseURL = cluster.URL("postgres")
	}

	if len(cfg.JWTSecret) == 0 {
		cfg.JWTSecret = []byte(randomHex(32))
	}
	if len(cfg.APIKeys) == 0 {
		cfg.APIKeys = []string{"dev-" + randomHex(12)}
	}
	cfg.Logger = logger

	srv, err := server.New(cfg)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return fmt.Errorf("listen on %s (use --addr to pick another): %w", cfg.Addr, err)
	}

	serveCtx, stopServe := context.WithCancel(ctx)
	defer stopServe()
	var wg sync.WaitGroup
	var serveErr error
	wg.Go(func() { serveErr = srv.Serve(serveCtx, ln) })

	err = devWelcome(ctx, cfg, ln.Addr().String(), demo, stdout)
	if err != nil && ctx.Err() == nil {
		stopServe()
		wg.Wait()
		return err
	}

	<-ctx.Done()
	fmt.Fprintln(stdout, "\nShutting down...")
	stopServe()
	wg.Wait()
	return serveErr
}

// devWelcome waits until the server is ready, creates the demo table,
// prints what to try, and runs the demo.
func devWelcome(ctx context.Context, cfg server.Config, addr string, demo bool, stdout io.Writer) error {
	base := "http://" + addr
	if err := waitReady(ctx, base); err != nil {
		return err
	}

	conn, err := pgx.Connect(ctx, cfg.DatabaseURL)
	if err != nil {
		return fmt.Errorf("connect for the demo table: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, demoSchema); err != nil {
		return fmt.Errorf("create the demo table: %w", err)
	}

	token, err := auth.Sign(cfg.JWTSecret, "dev-user", auth.Realtime{
		Subscribe: []string{">", "db.>", "pg.>"},
		Publish:   []string{">"},
	}, 24*time.Hour)
	if err != nil {
		return err
	}

	wsURL := "ws://" + addr + "/v1/ws"
	fmt.Fprintf(stdout, `
The sidecar is ready at %s.

  Database URL   %s
  API key        %s
  Client token   %s

Try it in another terminal:

  export SIDECAR_URL='%s' SIDECAR_WS_URL='%s' SIDECAR_API_KEY='%s' DEV_DB='%s'
  export SIDECAR_TOKEN='%s'
  go run ./cmd/sidecar sub 'db.public.todos' 'chat.>'

and in a third one, with the same exports:

  psql "$DEV_DB" -c "INSERT INTO todos (title) VALUES ('buy milk')"
  go run ./cmd/sidecar pub chat.room1 '{"text": "hello"}'

Press Ctrl-C to stop the sidecar and the throwaway Postgres.
`, base, cfg.DatabaseURL, cfg.APIKeys[0], token, base, wsURL, cfg.APIKeys[0], cfg.DatabaseURL, token)

	if !demo {
		return nil
	}
	return runDemo(ctx, conn, wsURL, token, stdout)
}

// runDemo shows the main job once: a row inserted with SQL reaches a
// websocket subscriber.
func runDemo(ctx context.Context, db *pgx.Conn, wsURL, token string, stdout io.Writer) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()

	ws, err := client.Dial(ctx, wsURL, client.Options{Token: token})
	if err != nil {
		return fmt.Errorf("demo: connect: %w", err)
	}
	defer ws.Close()
	sub, err := ws.Subscribe(ctx, []string{"db.public.todos"})
	if err != nil {
		return fmt.Errorf("demo: subscribe: %w", err)
	}

	title := "demo row " + time.Now().Format(time.TimeOnly)
	if _, err := db.Exec(ctx, "INSERT INTO todos (title) VALUES ($1)", title); err != nil {
		return fmt.Errorf("demo: insert: %w", err)
	}
	fmt.Fprintf(stdout, "\nDemo: INSERT INTO todos (title) VALUES ('%s') ...\n", title)

	select {
	case ev := <-sub.Events():
		fmt.Fprintf(stdout, "Demo: a websocket subscriber of db.public.todos received event %d: %s\n\n", ev.ID, ev.Data)
		return nil
	case <-ctx.Done():
		return errors.New("demo: the inserted row did not reach the subscriber within 30s")
	}
}

func waitReady(ctx context.Context, base string) error {
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		if run(ctx, []string{"health", base}, nil, io.Discard, io.Discard) == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return errors.New("the server did not become ready within 2 minutes: see the log above")
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return strings.ToLower(hex.EncodeToString(b))
}
