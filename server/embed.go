package server

import (
	"context"
	"net/http"
	"sync"

	"github.com/pgsidecar/sidecar/appcall"
)

// Start runs the server's background work without an HTTP listener of its
// own, for a program that mounts Handler in its own HTTP server. Like Serve,
// it migrates the database, opens the LISTEN connection and starts the
// relay, the retention job and the readiness probe. /readyz stays 503 and
// websockets are rejected until that start completes.
//
// The work runs until stop is called or ctx ends, whichever comes first.
// Then the server drains as Serve does: /readyz turns 503, new websockets
// and publishes are rejected with 503, open websockets are closed with
// 1012 within DrainTimeout, the background work stops and the connection
// pool is closed. stop waits for all of that and may be called more than
// once and from any goroutine. The embedding program shuts down its own
// HTTP server after stop returns.
//
// Call Start or Serve (or Run) once per Server: the pool cannot be reopened.
func (s *Server) Start(ctx context.Context) (stop func()) {
	// drain shuts down the http.Server it is given once the websockets are
	// closed. This one never served, so its Shutdown returns at once; the
	// embedding program shuts down its own server.
	return s.run(ctx, &http.Server{})
}

// run starts the background work and returns the function that drains the
// server, with httpServer, and stops everything. See Start.
func (s *Server) run(ctx context.Context, httpServer *http.Server) (stop func()) {
	runCtx, cancelRun := context.WithCancel(context.WithoutCancel(ctx))
	s.ctx = runCtx

	var background sync.WaitGroup
	background.Go(func() { s.start(runCtx) })

	stopping := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		select {
		case <-ctx.Done():
		case <-stopping:
		}

		s.drain(httpServer)
		cancelRun()
		background.Wait()
		if f, ok := s.app.(*appcall.Forwarder); ok {
			f.Close()
		}
		s.pool.Close()
		s.log.Info("stopped")
	}()

	var once sync.Once
	return func() {
		once.Do(func() { close(stopping) })
		<-stopped
	}
}
