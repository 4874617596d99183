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
	"github.com/pgsidecar/sidecar/cmd/sidecar/demo"
	"github.com/pgsidecar/sidecar/pgcluster"
	"github.com/pgsidecar/sidecar/server"
)

// devFlags contains the values of the "sidecar dev" flags that are not fields
// of server.Config.
type devFlags struct {
	logFormat, logLevel, dataDir *string
	demo                         *bool
}

// newDevFlags declares every flag of "sidecar dev": the settings of
// serverFlags, with --addr defaulting to 127.0.0.1:7070, and --data-dir and
// --demo.
func newDevFlags(cfg *server.Config) (*envFlags, devFlags) {
	cfg.Addr = "127.0.0.1:7070"
	f := newEnvFlags("sidecar dev")
	var v devFlags
	v.logFormat, v.logLevel = serverFlags(f, cfg)
	v.dataDir = f.fs.String("data-dir", "", "keep the throwaway Postgres cluster here (empty: a temporary directory removed on exit)")
	v.demo = f.fs.Bool("demo", true, "insert a row once ready and show it reaching a websocket subscriber")
	return f, v
}

func runDev(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	cfg := server.Defaults()
	cfg.Version = version
	f, flags := newDevFlags(&cfg)
	if err := parseFlags(f, args, getenv, stderr); err != nil {
		return err
	}
	dataDir, cliDemo := *flags.dataDir, *flags.demo
	logger, err := newLogger(stderr, *flags.logFormat, *flags.logLevel)
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

	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return fmt.Errorf("listen on %s (use --addr to pick another): %w", cfg.Addr, err)
	}

	// demo.Run serves the sidecar with the todo page and its application,
	// and creates the todos table once the sidecar is ready.
	serveCtx, stopServe := context.WithCancel(ctx)
	defer stopServe()
	ready := make(chan struct{})
	var wg sync.WaitGroup
	var serveErr error
	wg.Go(func() {
		defer stopServe()
		serveErr = demo.Run(serveCtx, cfg, ln, func() { close(ready) })
	})

	select {
	case <-ready:
		err = devWelcome(serveCtx, cfg, ln.Addr().String(), cliDemo, stdout)
	case <-serveCtx.Done():
	}
	if err != nil && serveCtx.Err() == nil {
		stopServe()
		wg.Wait()
		return err
	}

	<-serveCtx.Done()
	if ctx.Err() != nil {
		fmt.Fprintln(stdout, "\nShutting down...")
	}
	wg.Wait()
	return serveErr
}

// devWelcome prints what to try and runs the command-line demo. The
// sidecar is ready and the todos table exists when it is called.
func devWelcome(ctx context.Context, cfg server.Config, addr string, cliDemo bool, stdout io.Writer) error {
	token, err := auth.Sign(cfg.JWTSecret, "dev-user", auth.Realtime{
		Subscribe: []string{">", "db.>", "pg.>"},
		Publish:   []string{">"},
		Call:      []string{"app.todos.*"},
	}, 24*time.Hour)
	if err != nil {
		return err
	}

	base := "http://" + addr
	wsURL := "ws://" + addr + "/v1/ws"
	fmt.Fprintf(stdout, `
The sidecar is ready at %s.

  Todo demo page %s/
  Database URL   %s
  API key        %s
  Client token   %s

Open the demo page in two browser tabs: an item added or ticked in one
shows in the other at once. Try it in another terminal too:

  export SIDECAR_URL='%s' SIDECAR_WS_URL='%s' SIDECAR_API_KEY='%s' DEV_DB='%s'
  export SIDECAR_TOKEN='%s'
  go run ./cmd/sidecar sub 'db.public.todos' 'chat.>'

and in a third one, with the same exports:

  psql "$DEV_DB" -c "INSERT INTO todos (title) VALUES ('buy milk')"
  go run ./cmd/sidecar pub chat.room1 '{"text": "hello"}'

Press Ctrl-C to stop the sidecar and the throwaway Postgres.
`, base, base, cfg.DatabaseURL, cfg.APIKeys[0], token, base, wsURL, cfg.APIKeys[0], cfg.DatabaseURL, token)

	if !cliDemo {
		return nil
	}
	conn, err := pgx.Connect(ctx, cfg.DatabaseURL)
	if err != nil {
		return fmt.Errorf("demo: connect: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
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

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return strings.ToLower(hex.EncodeToString(b))
}
