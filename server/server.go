package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgsidecar/sidecar/appcall"
	"github.com/pgsidecar/sidecar/auth"
	"github.com/pgsidecar/sidecar/db/migrations"
	"github.com/pgsidecar/sidecar/hub"
	"github.com/pgsidecar/sidecar/listen"
	"github.com/pgsidecar/sidecar/relay"
	"github.com/pgsidecar/sidecar/rpc"
	"github.com/pgsidecar/sidecar/store"
	"github.com/pgsidecar/sidecar/topic"
)

// Application receives the app.<name> calls of clients. The sidecar's own
// implementation is appcall.Forwarder, which posts them to --app-rpc-url; a
// Go program that embeds the server can answer them in-process instead.
// Forward must be safe for concurrent use and return when ctx ends.
type Application interface {
	Forward(ctx context.Context, c appcall.Call) (json.RawMessage, *rpc.Error)
}

// Server is one sidecar instance: the HTTP and websocket endpoints, the
// hub, the LISTEN connection and the relay between them.
//
// Run owns every goroutine the server starts and returns when they have
// all stopped.
type Server struct {
	cfg Config
	log *slog.Logger

	pool     *pgxpool.Pool
	store    *store.Store
	hub      *hub.Hub
	listener *listen.Listener
	verifier *auth.Verifier // nil without token keys: tokens are refused
	// notifyKey signs and checks the notifications between sidecars; it is
	// read from the database at start and again when a check fails.
	notifyKey   atomic.Pointer[store.NotifyKey]
	keyReloaded atomic.Pointer[time.Time]
	app         Application   // nil without --app-rpc-url or Config.Application
	appCalls    atomic.Uint64 // the sidecar's own ids of forwarded calls
	apiKeys     auth.APIKeys

	anonymous      *auth.Claims
	originPatterns []string

	// ctx is the server's lifetime; websocket sessions derive theirs from it.
	ctx context.Context

	epochValue  atomic.Pointer[string]
	notifyQueue atomic.Uint64 // float64 bits of pg_notification_queue_usage()
	relay       atomic.Pointer[relay.Relay]
	backbone    *backbone // nil without --fastapi-backbone-channel
	metrics     *metrics
	started     atomic.Bool // migrations applied and the first LISTEN is up
	draining    atomic.Bool

	// instance names this sidecar process; every client id starts with it.
	instance string
	router   router

	handler  http.Handler
	sessions sessions // connected clients, for calls from the application
	// sessionLoops counts the goroutines that run websocket sessions after
	// their handlers have returned; drain waits for them. loopsClosed,
	// guarded by loopsMu, is set before that wait, and no session starts
	// after it.
	sessionLoops sync.WaitGroup
	loopsMu      sync.Mutex
	loopsClosed  bool
	conns        connLimits
}

// New checks cfg and builds a server. It connects to nothing yet: Run does.
func New(cfg Config) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}

	s := &Server{cfg: cfg, log: cfg.Logger, instance: randomID(8)}
	s.router.s = s
	s.log = s.log.With("instance", s.instance)
	if cfg.drainSpread() < cfg.DrainSpread {
		s.log.Warn("--drain-spread is longer than half of --drain-timeout; a drain spreads its closes over half the timeout",
			"drain_spread", cfg.DrainSpread, "drain_timeout", cfg.DrainTimeout, "used", cfg.drainSpread())
	}

	if len(cfg.JWTSecret) > 0 || cfg.JWTPublicKeyFile != "" || cfg.JWKSFile != "" {
		leeway := cfg.JWTLeeway
		if leeway == 0 {
			leeway = -1 // auth.Config reads zero as its default
		}
		verifier, err := auth.NewVerifier(auth.Config{
			HS256Secret:    cfg.JWTSecret,
			PublicKeyFile:  cfg.JWTPublicKeyFile,
			JWKSFile:       cfg.JWKSFile,
			ReloadInterval: cfg.JWTKeyReload,
			Audience:       cfg.JWTAudience,
			Issuer:         cfg.JWTIssuer,
			Leeway:         leeway,
			Logger:         s.log,
		})
		if err != nil {
			return nil, err
		}
		s.verifier = verifier
	}
	s.apiKeys = auth.NewAPIKeys(cfg.APIKeys)
	s.app = cfg.Application
	if s.app == nil && cfg.AppRPCURL != "" {
		app, err := appcall.New(appcall.Config{
			URL:     cfg.AppRPCURL,
			Token:   cfg.AppRPCToken,
			Timeout: cfg.AppRPCTimeout,
			Logger:  s.log.With("component", "appcall"),
		})
		if err != nil {
			return nil, err
		}
		s.app = app
	}

	if len(cfg.AnonymousSubscribe) > 0 || len(cfg.AnonymousPublish) > 0 {
		sub, err := topic.ParseSet(cfg.AnonymousSubscribe)
		if err != nil {
			return nil, fmt.Errorf("--anonymous-subscribe: %w", err)
		}
		pub, err := topic.ParseSet(cfg.AnonymousPublish)
		if err != nil {
			return nil, fmt.Errorf("--anonymous-publish: %w", err)
		}
		s.anonymous = auth.Anonymous(sub, pub)
	}
	s.originPatterns = cfg.AllowedOrigins

	poolCfg, err := pgxpool.ParseConfig(cfg.DatabaseURL)
	if err != nil {
		return nil, fmt.Errorf("--database-url: %w", err)
	}
	listenURL := cfg.ListenDatabaseURL
	if listenURL == "" {
		listenURL = cfg.DatabaseURL
	}
	listenCfg, err := pgx.ParseConfig(listenURL)
	if err != nil {
		return nil, fmt.Errorf("--listen-database-url: %w", err)
	}

	// Name the sessions in pg_stat_activity, unless the URLs already do.
	if poolCfg.ConnConfig.RuntimeParams["application_name"] == "" {
		poolCfg.ConnConfig.RuntimeParams["application_name"] = "sidecar"
	}
	if listenCfg.RuntimeParams["application_name"] == "" {
		listenCfg.RuntimeParams["application_name"] = "sidecar-listen"
	}

	channels := append([]string{store.Channel, RoutingChannel}, cfg.ListenChannels...)
	if ch := cfg.FastAPIBackboneChannel; ch != "" {
		if err := listen.ValidateChannel(ch); err != nil {
			return nil, fmt.Errorf("--fastapi-backbone-channel: %w", err)
		}
		if slices.Contains(channels, ch) {
			return nil, fmt.Errorf("--fastapi-backbone-channel %q is also a channel the sidecar listens to for another purpose: choose another", ch)
		}
		channels = append(channels, ch)
		s.backbone = newBackbone(s, ch)
	}
	s.listener, err = listen.New(listen.Config{
		Connect: func(ctx context.Context) (*pgx.Conn, error) {
			return pgx.ConnectConfig(ctx, listenCfg.Copy())
		},
		Channels: channels,
		// Delivery and readiness wait for the LISTEN connection, so retry
		// it often: at least every 5 s.
		MaxBackoff: 5 * time.Second,
		Logger:     s.log.With("component", "listen"),
	})
	if err != nil {
		return nil, fmt.Errorf("--listen-channels: %w", err)
	}

	s.pool, err = pgxpool.NewWithConfig(context.Background(), poolCfg)
	if err != nil {
		return nil, fmt.Errorf("connection pool: %w", err)
	}
	s.store = store.New(s.pool)

	s.metrics = newMetrics(s)
	s.hub = hub.New(hub.Config{
		DeliveryLatency: func(d time.Duration) { s.metrics.delivery.Observe(d.Seconds()) },
		QueueBytes:      cfg.QueueBytes,
		MaxQueueBytes:   cfg.MaxQueueBytes,
		SlowGrace:       cfg.SlowGrace,
		WriteTimeout:    cfg.WriteTimeout,
		Heartbeat:       cfg.Heartbeat,
		HeartbeatMsg:    rpc.EncodeNotification("heartbeat", struct{}{}),
		Logger:          s.log.With("component", "hub"),
	})

	empty := ""
	s.epochValue.Store(&empty)
	s.handler = s.routes()
	return s, nil
}

// Handler returns the HTTP handler of every endpoint.
func (s *Server) Handler() http.Handler { return s.handler }

// Hub returns the server's hub, for metrics and tests.
func (s *Server) Hub() *hub.Hub { return s.hub }

func (s *Server) epoch() string { return *s.epochValue.Load() }

// Run serves on cfg.Addr until ctx ends, then drains: /readyz turns 503,
// new connections are refused, websockets and event streams are closed
// with 1012 at random moments within DrainSpread (at most half of
// DrainTimeout), all within DrainTimeout,
// and Run returns nil once everything has stopped.
func (s *Server) Run(ctx context.Context) error {
	ln, err := net.Listen("tcp", s.cfg.Addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", s.cfg.Addr, err)
	}
	return s.Serve(ctx, ln)
}

// Serve is Run on a listener the caller made; Serve closes it.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	httpServer := &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	stopMetrics, err := s.serveMetrics()
	if err != nil {
		ln.Close()
		return err
	}
	defer stopMetrics()

	httpDone := make(chan error, 1)
	go func() { httpDone <- httpServer.Serve(ln) }()
	s.log.Info("serving", "addr", ln.Addr().String(), "version", s.cfg.Version)

	stop := s.run(ctx, httpServer)
	select {
	case <-ctx.Done():
		stop()
		return nil
	case err := <-httpDone:
		stop()
		return fmt.Errorf("http server: %w", err)
	}
}

// serveMetrics serves /metrics on Config.MetricsAddr, when set, until the
// returned function is called. Scrapes keep working while the server
// drains, so the drain itself can be watched.
func (s *Server) serveMetrics() (stop func(), err error) {
	if s.cfg.MetricsAddr == "" {
		return func() {}, nil
	}
	ln, err := net.Listen("tcp", s.cfg.MetricsAddr)
	if err != nil {
		return nil, fmt.Errorf("--metrics-addr %s: %w", s.cfg.MetricsAddr, err)
	}

	mux := http.NewServeMux()
	mux.Handle("GET /metrics", s.MetricsHandler())
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("metrics server stopped", "component", "metrics", "err", err)
		}
	}()
	s.log.Info("serving metrics", "component", "metrics", "addr", ln.Addr().String())

	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		<-done
	}, nil
}

// start brings the instance to ready: migrations, settings, epoch and head,
// then the LISTEN connection and the relay. A database that is not up yet
// is retried; readiness stays 503 meanwhile.
func (s *Server) start(ctx context.Context) {
	last, ok := s.prepareDatabase(ctx)
	if !ok {
		return
	}
	s.hub.SetWatermark(last)

	probes := make(chan string, 16)
	r := relay.New(relay.Config{
		Store: s.store,
		Open: func(channel, payload string) (string, bool) {
			if channel != store.Channel && channel != RoutingChannel {
				return payload, true // a --listen-channels or backbone channel: not signed
			}
			return s.openNotification(ctx, channel, payload)
		},
		Intercept: func(channel, payload string) bool {
			switch {
			case channel == RoutingChannel:
				s.router.handle(ctx, payload)
				return true
			case s.backbone != nil && channel == s.backbone.channel:
				s.backbone.receive(payload)
				return true
			}
			return false
		},
		Probe: func(token string) {
			select {
			case probes <- token:
			default:
			}
		},
		Last: last,
		Deliver: func(ev store.Event) {
			s.metrics.eventsIn.WithLabelValues(eventSource(ev)).Inc()
			published, _ := time.Parse(store.TimeLayout, ev.TS)
			hev := hub.Event{Topic: ev.Topic, Data: ev.Data, ID: ev.ID, TS: ev.TS, Published: published}
			s.hub.Publish(hev)
			if s.backbone != nil {
				s.backbone.offer(hev)
			}
		},
		NewIDSpace: func(lastBefore int64) {
			s.hub.SetWatermark(lastBefore)
			s.refreshEpoch(ctx)
		},
		Logger: s.log.With("component", "relay"),
	})

	s.relay.Store(r)

	var wg sync.WaitGroup
	wg.Go(func() {
		if err := s.listener.Run(ctx); err != nil {
			s.log.Error("listener stopped", "err", err)
		}
	})
	wg.Go(func() {
		if err := r.Run(ctx, s.listener.Events()); err != nil {
			s.log.Error("relay stopped", "err", err)
		}
	})
	wg.Go(func() { s.retain(ctx) })
	if s.backbone != nil {
		wg.Go(func() { s.backbone.run(ctx) })
	}

	wg.Go(func() { s.watchNotifyQueue(ctx) })
	wg.Go(func() { s.router.heartbeat(ctx) })

	select {
	case <-s.listener.Ready():
		if s.probeUntilHeard(ctx, probes) {
			s.started.Store(true)
			s.log.Info("ready", "epoch", s.epoch(), "head", last)
		}
	case <-ctx.Done():
	}
	wg.Wait()
}

// prepareDatabase retries until the database is migrated and its settings
// stored, and returns the newest event id.
func (s *Server) prepareDatabase(ctx context.Context) (int64, bool) {
	delay := 250 * time.Millisecond
	for attempt := 1; ; attempt++ {
		head, err := s.prepareOnce(ctx)
		if err == nil {
			return head, true
		}
		if ctx.Err() != nil {
			return 0, false
		}
		var pgErr *pgconn.PgError
		if !s.cfg.Migrate && errors.As(err, &pgErr) && pgErr.Code == "42P01" {
			// undefined_table: the realtime schema is missing or old.
			s.log.Warn("database not ready, retrying: the sidecar's tables are missing; run \"sidecar migrate up\" or start with --migrate=true",
				"attempt", attempt, "retry_in", delay, "err", err)
		} else {
			s.log.Warn("database not ready, retrying", "attempt", attempt, "retry_in", delay, "err", err)
		}
		select {
		case <-ctx.Done():
			return 0, false
		case <-time.After(delay):
		}
		delay = min(2*delay, 10*time.Second)
	}
}

func (s *Server) prepareOnce(ctx context.Context) (int64, error) {
	if s.cfg.Migrate {
		if err := migrations.Up(ctx, s.cfg.DatabaseURL, s.log.With("component", "migrate")); err != nil {
			return 0, err
		}
	}
	if err := s.store.SetMaxEventBytes(ctx, s.cfg.MaxEventBytes); err != nil {
		return 0, err
	}
	key, err := s.store.LoadNotifyKey(ctx)
	if err != nil {
		return 0, err
	}
	s.notifyKey.Store(key)
	epoch, err := s.store.Epoch(ctx)
	if err != nil {
		return 0, err
	}
	s.epochValue.Store(&epoch)
	return s.store.Head(ctx)
}

// retain deletes expired events once a minute, and refreshes the epoch,
// which changes when the database is promoted or restored.
func (s *Server) retain(ctx context.Context) {
	tick := time.NewTicker(time.Minute)
	defer tick.Stop()
	for {
		cutoff := time.Now().Add(-s.cfg.Retention)
		n, err := s.store.Purge(ctx, cutoff, 1000)
		switch {
		case err != nil && ctx.Err() == nil:
			s.log.Warn("retention run failed", "err", err)
		case n > 0:
			s.log.Info("expired events deleted", "transactions", n, "cutoff", cutoff)
		}
		if _, err := s.store.PurgeKeys(ctx, cutoff, 1000); err != nil && ctx.Err() == nil {
			s.log.Warn("deleting expired idempotency keys failed", "err", err)
		}

		s.refreshEpoch(ctx)

		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// openNotification checks the authenticator of a notification of channel
// and returns its payload. When the check fails, the key is read again (at
// most every 5 s), since a recreated schema has a new one; the relay then
// sees a new id space too.
func (s *Server) openNotification(ctx context.Context, channel, signed string) (string, bool) {
	if key := s.notifyKey.Load(); key != nil {
		if payload, ok := key.Open(channel, signed); ok {
			return payload, true
		}
	}

	now := time.Now()
	if last := s.keyReloaded.Load(); last != nil && now.Sub(*last) < 5*time.Second {
		return "", false
	}
	s.keyReloaded.Store(&now)
	rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	key, err := s.store.LoadNotifyKey(rctx)
	if err != nil {
		s.log.Warn("rereading the notification key failed", "err", err)
		return "", false
	}
	s.notifyKey.Store(key)
	return key.Open(channel, signed)
}

// probeUntilHeard sends a NOTIFY through the query pool and waits for the
// LISTEN connection to hear it, retrying until it does or ctx ends. Through
// a transaction pooler, or with --listen-database-url naming another
// database, LISTEN hears nothing, and the instance must not report ready.
func (s *Server) probeUntilHeard(ctx context.Context, heard <-chan string) bool {
	const wait = 10 * time.Second
	for attempt := 1; ; attempt++ {
		token := newClientID()
		payload := s.notifyKey.Load().Sign(store.Channel, `{"k":"p","p":"`+token+`"}`)
		if _, err := s.pool.Exec(ctx, "SELECT pg_notify($1, $2)", store.Channel, payload); err != nil {
			if ctx.Err() != nil {
				return false
			}
			s.log.Warn("sending the start-up probe notification failed, retrying", "attempt", attempt, "err", err)
		} else if s.awaitProbe(ctx, heard, token, wait) {
			return true
		} else if ctx.Err() == nil {
			s.log.Error("the LISTEN connection did not receive a NOTIFY sent through the query pool; not ready. "+
				"LISTEN needs a session on the same database: point --listen-database-url at the database directly, not through a transaction pooler",
				"attempt", attempt, "waited", wait)
		}

		select {
		case <-ctx.Done():
			return false
		case <-time.After(time.Second):
		}
	}
}

func (s *Server) awaitProbe(ctx context.Context, heard <-chan string, token string, wait time.Duration) bool {
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for {
		select {
		case got := <-heard:
			if got == token {
				return true
			}
		case <-timer.C:
			return false
		case <-ctx.Done():
			return false
		}
	}
}

// watchNotifyQueue samples how full the server's notification queue is.
// The sidecar reads its LISTEN connection without waiting for clients, so
// a growing queue points at another listener that stopped reading, or at a
// sidecar that cannot keep up.
func (s *Server) watchNotifyQueue(ctx context.Context) {
	tick := time.NewTicker(5 * time.Second)
	defer tick.Stop()
	above := false
	for {
		var usage float64
		err := s.pool.QueryRow(ctx, "SELECT pg_notification_queue_usage()").Scan(&usage)
		if err == nil {
			s.notifyQueue.Store(math.Float64bits(usage))
			switch {
			case usage >= s.cfg.NotifyQueueWarn && !above:
				above = true
				s.log.Warn("Postgres' notification queue is filling up: a session that LISTENs is not reading", "usage", usage, "threshold", s.cfg.NotifyQueueWarn)
			case usage < s.cfg.NotifyQueueWarn/2 && above:
				above = false
				s.log.Info("Postgres' notification queue has drained", "usage", usage)
			}
		}

		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// refreshEpoch reads the epoch again; it changes when the database is
// promoted, restored or its realtime schema recreated.
func (s *Server) refreshEpoch(ctx context.Context) {
	epoch, err := s.store.Epoch(ctx)
	if err != nil {
		if ctx.Err() == nil {
			s.log.Warn("reading the epoch failed", "err", err)
		}
		return
	}
	if old := s.epoch(); epoch != old {
		s.log.Warn("epoch changed: clients resuming from the old epoch will be told to reload", "old", old, "new", epoch)
		s.epochValue.Store(&epoch)
	}
}

// drain stops the instance in the order that loses no client: readiness
// first, then new connections, then the open websockets.
func (s *Server) drain(httpServer *http.Server) {
	s.draining.Store(true)
	s.log.Info("draining", "timeout", s.cfg.DrainTimeout, "spread", s.cfg.drainSpread(), "clients", s.hub.Stats().Clients)

	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.DrainTimeout)
	defer cancel()

	// The HTTP server keeps answering while the websockets close, so
	// /readyz reports 503 and new websockets are refused with 503.
	if err := s.hub.ShutdownSpread(ctx, s.cfg.drainSpread(), int(closeDraining), "sidecar restarting: reconnect"); err != nil {
		s.log.Warn("websockets still open at the drain deadline were dropped", "err", err)
	}
	s.loopsMu.Lock()
	s.loopsClosed = true
	s.loopsMu.Unlock()
	loopsDone := make(chan struct{})
	go func() {
		s.sessionLoops.Wait()
		close(loopsDone)
	}()
	select {
	case <-loopsDone:
	case <-ctx.Done():
		s.log.Warn("websocket sessions still finishing at the drain deadline")
	}
	if err := httpServer.Shutdown(ctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		s.log.Warn("http shutdown did not finish in time", "err", err)
	}
}
