// Package demo is the live todo list that "sidecar dev" serves: a page that
// shows the rows of the table public.todos and updates them from the
// table's row-change events, with the sidecar's browser client.
//
// The page calls three application methods, which App handles in-process:
//
//	app.todos.list    {}                 -> {"todos": [...], "head": N, "epoch": E}
//	app.todos.add     {"title": string}  -> the new row
//	app.todos.toggle  {"id": integer}    -> the updated row
//
// It reads the list, then subscribes to db.public.todos with since=head,
// so no change made in between is lost, and resumes from the last event id
// after a reconnect. Writes from any source, the page or psql, reach every
// open page through the trigger.
package demo

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgsidecar/sidecar/server"
)

// Schema creates the demo's table with the row-change trigger, which
// publishes every change on db.public.todos. It is idempotent.
const Schema = `
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

// shutdownTimeout bounds the wait for HTTP requests in flight at shutdown,
// after the websockets are closed.
const shutdownTimeout = 5 * time.Second

// Run serves the sidecar of cfg with the demo page (see Handler) and the
// demo application on ln, until ctx ends. Once the sidecar is ready it
// creates the todos table and calls ready, if not nil, from Run's
// goroutine. cfg.Application is replaced by App.
//
// When ctx ends, Run drains as server.Server.Serve does: websockets are
// closed with 1012 within cfg.DrainTimeout, then the HTTP server stops.
// Run closes ln and returns nil after a shutdown through ctx, or the error
// that stopped it.
func Run(ctx context.Context, cfg server.Config, ln net.Listener, ready func()) error {
	pool, err := pgxpool.New(ctx, cfg.DatabaseURL)
	if err != nil {
		_ = ln.Close()
		return fmt.Errorf("demo: open a connection pool: %w", err)
	}
	defer pool.Close()

	cfg.Application = NewApp(pool, cfg.Logger)
	srv, err := server.New(cfg)
	if err != nil {
		_ = ln.Close()
		return err
	}

	httpServer := &http.Server{
		Handler:           Handler(srv.Handler(), cfg.JWTSecret, cfg.Logger),
		ReadHeaderTimeout: 10 * time.Second,
	}
	served := make(chan error, 1)
	go func() { served <- httpServer.Serve(ln) }()

	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := srv.Start(runCtx)
	defer func() {
		stop()
		shutdownCtx, cancelShutdown := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
		defer cancelShutdown()
		_ = httpServer.Shutdown(shutdownCtx)
	}()

	if err := prepare(runCtx, srv.Handler(), pool, served); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	if ready != nil {
		ready()
	}

	select {
	case <-ctx.Done():
		return nil
	case err := <-served:
		return fmt.Errorf("demo: http server: %w", err)
	}
}

// prepare waits until the sidecar is ready, which means its migrations are
// applied, and then creates the todos table.
func prepare(ctx context.Context, sidecar http.Handler, pool *pgxpool.Pool, served <-chan error) error {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for !isReady(sidecar) {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-served:
			return fmt.Errorf("demo: http server: %w", err)
		case <-tick.C:
		}
	}

	if _, err := pool.Exec(ctx, Schema); err != nil {
		return fmt.Errorf("demo: create the todos table: %w", err)
	}
	return nil
}

// isReady requests the sidecar's /readyz in-process.
func isReady(sidecar http.Handler) bool {
	rec := httptest.NewRecorder()
	sidecar.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/readyz", nil))
	return rec.Code == http.StatusOK
}
