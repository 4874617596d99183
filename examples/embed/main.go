// Command embed is an application written in Go that embeds the sidecar
// instead of running it beside itself. One Echo server carries both the
// application's own routes and the sidecar's endpoints, and clients' app.<name>
// calls reach the application's Go functions directly, with no HTTP hop.
//
// Routes of the application:
//
//	GET  /hello     a plain application endpoint
//	POST /announce  publishes its JSON body on demo.announcements with SQL
//
// Routes of the sidecar, mounted on the same server: /v1/ws, /v1/publish,
// /readyz and /healthz. Methods clients may call: app.add ([a, b] gives
// a + b) and app.whoami (the caller's subject and client id).
//
// To try it against the database of `sidecar dev`, start that in one
// terminal, paste its export lines into a second one and run:
//
//	DATABASE_URL="$DEV_DB" go run ./examples/embed
//
// It listens on 127.0.0.1:8080 (-addr) and prints a client token for the
// subject "demo". In a third terminal, subscribe with that token, then
// publish from the application and from SQL:
//
//	go run ./cmd/sidecar sub --url ws://127.0.0.1:8080/v1/ws --token TOKEN 'demo.>'
//	curl -d '{"text": "hello"}' http://127.0.0.1:8080/announce
//	psql "$DEV_DB" -c "SELECT realtime.publish('demo.sql', '{\"text\": \"from SQL\"}')"
//
// The Go client calls the methods with conn.Call(ctx, "app.add", []int{2, 3}, &sum).
// Ctrl-C drains the websockets, then stops the HTTP server.
package main

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/labstack/echo/v4"

	"github.com/pgsidecar/sidecar/auth"
	"github.com/pgsidecar/sidecar/server"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "embed:", err)
		os.Exit(1)
	}
}

func run() error {
	addr := flag.String("addr", "127.0.0.1:8080", "HTTP listen address of the application")
	databaseURL := flag.String("database-url", os.Getenv("DATABASE_URL"), "Postgres URL (default $DATABASE_URL)")
	secret := flag.String("jwt-secret", os.Getenv("SIDECAR_JWT_SECRET"), "HS256 secret for client tokens, at least 16 bytes (default $SIDECAR_JWT_SECRET, or a random one)")
	flag.Parse()
	if *databaseURL == "" {
		return errors.New("no database: set DATABASE_URL or -database-url, for example to $DEV_DB of `sidecar dev`")
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))

	key := []byte(*secret)
	if len(key) == 0 {
		key = []byte(rand.Text())
		log.Info("no -jwt-secret given: using a random one, so tokens stop working when the program restarts")
	}

	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()

	// The application's own connection pool, for its own queries and for
	// publishing with SQL inside its transactions.
	pool, err := pgxpool.New(ctx, *databaseURL)
	if err != nil {
		return fmt.Errorf("database pool: %w", err)
	}
	defer pool.Close()

	cfg := server.Defaults()
	cfg.DatabaseURL = *databaseURL
	cfg.JWTSecret = key
	cfg.Application = newMethods()
	cfg.Logger = log.With("component", "sidecar")
	srv, err := server.New(cfg)
	if err != nil {
		return fmt.Errorf("sidecar: %w", err)
	}

	// Start migrates, opens the LISTEN connection and starts the relay. It
	// drains by itself when ctx ends, and stop waits for that.
	stop := srv.Start(ctx)
	defer stop()

	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", *addr, err)
	}
	httpServer := &http.Server{
		Handler:           newApp(pool, srv.Handler()),
		ReadHeaderTimeout: 10 * time.Second,
	}
	served := make(chan error, 1)
	go func() { served <- httpServer.Serve(ln) }()

	demo, err := auth.Sign(key, "demo", auth.Realtime{
		Subscribe: []string{"demo.>"},
		Call:      []string{"app.add", "app.whoami"},
	}, 24*time.Hour)
	if err != nil {
		return fmt.Errorf("signing the demo token: %w", err)
	}
	log.Info("serving", "addr", ln.Addr().String(), "websocket", "ws://"+ln.Addr().String()+"/v1/ws")
	fmt.Printf("client token for subject demo (valid 24h):\n%s\n", demo)

	select {
	case <-ctx.Done():
	case err := <-served:
		return fmt.Errorf("http server: %w", err)
	}

	// Close the websockets first, with 1012 so that clients reconnect
	// elsewhere, then the HTTP server.
	stop()
	shutdownCtx, cancelShutdown := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancelShutdown()
	if err := httpServer.Shutdown(shutdownCtx); err != nil {
		return fmt.Errorf("http shutdown: %w", err)
	}
	return nil
}

// newApp builds the application's Echo server with the sidecar's handler
// mounted beside its own routes.
func newApp(pool *pgxpool.Pool, sidecar http.Handler) *echo.Echo {
	e := echo.New()
	e.HideBanner = true
	e.HidePort = true

	e.GET("/hello", func(c echo.Context) error {
		return c.JSON(http.StatusOK, map[string]string{"message": "hello from the application"})
	})
	e.POST("/announce", func(c echo.Context) error {
		var data json.RawMessage
		if err := json.NewDecoder(c.Request().Body).Decode(&data); err != nil {
			return echo.NewHTTPError(http.StatusBadRequest, "the body must be JSON: "+err.Error())
		}

		// realtime.publish sends the event when this statement's
		// transaction commits, as it would inside any of the application's
		// transactions.
		// The event gets its id during the commit, so the id is not known
		// here.
		_, err := pool.Exec(c.Request().Context(),
			"SELECT realtime.publish('demo.announcements', $1::jsonb)", string(data))
		if err != nil {
			return fmt.Errorf("publishing the announcement: %w", err)
		}
		return c.NoContent(http.StatusNoContent)
	})

	mounted := echo.WrapHandler(sidecar)
	e.Any("/v1/*", mounted)
	e.GET("/readyz", mounted)
	e.GET("/healthz", mounted)
	return e
}
