package server

import (
	"crypto/subtle"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/pgsidecar/sidecar/rpc"
	"github.com/pgsidecar/sidecar/store"
)

// metrics holds the server's Prometheus collectors, on a registry of its
// own so that several servers in one process, and the embedding program's
// own metrics, do not collide. Label values come from fixed lists only:
// never a topic, client id or subject.
type metrics struct {
	registry *prometheus.Registry

	eventsIn  *prometheus.CounterVec   // source
	publishes *prometheus.CounterVec   // transport, outcome
	delivery  prometheus.Histogram     // from an event's publish time to the end of its write
	rpcCalls  *prometheus.HistogramVec // direction, outcome
	refused   *prometheus.CounterVec   // reason
}

// refusalReasons are the values of the refused counter's label.
var refusalReasons = []string{"rate_limited", "connection_limit", "subject_limit", "draining", "not_ready", "origin", "token", "api_key",
	"too_large_for_client", "too_large_for_backbone", "backbone_full", "backbone_topic", "backbone_invalid"}

// Sources of events that reach the relay, as the eventsIn label.
const (
	sourceTrigger   = "trigger"          // row changes, topics db.*
	sourcePublish   = "publish"          // durable events published by SQL or any instance's HTTP or websocket API
	sourceBroadcast = "broadcast"        // ephemeral events published the same ways
	sourceChannel   = "channel"          // notifications of --listen-channels, topics pg.*
	sourceBackbone  = "fastapi_backbone" // messages of Python servers on --fastapi-backbone-channel
)

// latencyBuckets spans a loopback delivery (under a millisecond) to a
// client that fell seconds behind.
var latencyBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}

func newMetrics(s *Server) *metrics {
	m := &metrics{registry: prometheus.NewRegistry()}
	reg := m.registry

	m.eventsIn = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sidecar_events_in_total",
		Help: "Events relayed from Postgres, by source: trigger (db.* row changes), publish (durable events from SQL or any instance's HTTP or websocket API), broadcast (ephemeral events), channel (--listen-channels) and fastapi_backbone (Python servers' messages).",
	}, []string{"source"})
	m.publishes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sidecar_publishes_total",
		Help: "Events that clients and the application published through this instance, by transport (http, websocket) and outcome (ok, error).",
	}, []string{"transport", "outcome"})
	m.delivery = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "sidecar_delivery_latency_seconds",
		Help:    "Time from a live event's publish time (the database clock) to the end of its write to a client, one observation per delivered copy.",
		Buckets: latencyBuckets,
	})
	m.rpcCalls = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "sidecar_rpc_duration_seconds",
		Help:    "Duration of calls through the sidecar, by direction (client_to_app, app_to_client) and outcome (ok, error, timeout, not_found).",
		Buckets: latencyBuckets,
	}, []string{"direction", "outcome"})
	m.refused = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sidecar_refused_total",
		Help: "Requests, connections and events refused, by reason: rate_limited, connection_limit, subject_limit, draining, not_ready, origin, token, api_key, too_large_for_client, too_large_for_backbone, backbone_full, backbone_topic, backbone_invalid.",
	}, []string{"reason"})
	reg.MustRegister(m.eventsIn, m.publishes, m.delivery, m.rpcCalls, m.refused)

	// Export every labelled series from the start, so that alerts and
	// rate() see 0 before the first event instead of no series at all.
	for _, source := range []string{sourceTrigger, sourcePublish, sourceBroadcast, sourceChannel, sourceBackbone} {
		m.eventsIn.WithLabelValues(source)
	}
	for _, transport := range []string{transportHTTP, transportWebsocket} {
		for _, outcome := range []string{outcomeOK, outcomeError} {
			m.publishes.WithLabelValues(transport, outcome)
		}
	}
	for _, direction := range []string{directionClientToApp, directionAppToClient} {
		for _, outcome := range []string{outcomeOK, outcomeError, outcomeTimeout, outcomeNotFound} {
			m.rpcCalls.WithLabelValues(direction, outcome)
		}
	}
	for _, reason := range refusalReasons {
		m.refused.WithLabelValues(reason)
	}

	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "sidecar_clients", Help: "Connected websockets and event streams.",
		}, func() float64 { return float64(s.hub.Stats().Clients) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "sidecar_subscriptions", Help: "Subscriptions of the connected clients.",
		}, func() float64 { return float64(s.hub.Stats().Subscriptions) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "sidecar_events_out_total", Help: "Event notifications queued for clients, live and replayed.",
		}, func() float64 { return float64(s.hub.Stats().Delivered) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "sidecar_slow_client_closes_total", Help: "Clients closed with 1013 because they did not read fast enough.",
		}, func() float64 { return float64(s.hub.Stats().SlowCloses) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "sidecar_dropped_messages_total", Help: "Queued messages discarded because their client was closed.",
		}, func() float64 { return float64(s.hub.Stats().Dropped) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "sidecar_write_errors_total", Help: "Clients dropped because a write to their connection failed.",
		}, func() float64 { return float64(s.hub.Stats().WriteErrors) }),

		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "sidecar_listener_connected", Help: "1 while the LISTEN connection is up.",
		}, func() float64 { return boolFloat(s.listener.Status().Connected) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "sidecar_listener_reconnects_total", Help: "Connection attempts of the LISTEN connection after the first.",
		}, func() float64 { return float64(s.listener.Status().Reconnects) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "sidecar_listener_dropped_total", Help: "Notifications the LISTEN connection dropped because its buffer was full; catch-up reads them again.",
		}, func() float64 { return float64(s.listener.Status().Dropped) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "sidecar_catchup_events_total", Help: "Durable events read from the table after the LISTEN connection was down.",
		}, func() float64 { return relayStat(s, func(r relayCounters) int64 { return r.CaughtUp() }) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "sidecar_notifications_rejected_total", Help: "Notifications dropped because their authenticator was missing or wrong.",
		}, func() float64 { return relayStat(s, func(r relayCounters) int64 { return r.Rejected() }) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "sidecar_notify_queue_usage_ratio", Help: "Fill level of Postgres' notification queue (0 to 1), read every 5 s.",
		}, s.notifyQueueUsage),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "sidecar_ready", Help: "1 while /readyz returns 200.",
		}, func() float64 { return boolFloat(s.ready()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "sidecar_draining", Help: "1 once a shutdown has begun.",
		}, func() float64 { return boolFloat(s.draining.Load()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "sidecar_fastapi_backbone_forwarder", Help: "1 while this instance forwards the fleet's events to the fastapi backbone.",
		}, func() float64 { return boolFloat(s.backbone != nil && s.backbone.leader.Load()) }),
		newPoolCollector(s),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return m
}

// relayCounters is the part of the relay that metrics read.
type relayCounters interface {
	CaughtUp() int64
	Rejected() int64
}

func relayStat(s *Server, read func(relayCounters) int64) float64 {
	r := s.relay.Load()
	if r == nil {
		return 0
	}
	return float64(read(r))
}

func boolFloat(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// poolCollector reports the query pool's statistics from one Stat call per
// scrape.
type poolCollector struct {
	s                                       *Server
	total, idle, acquired, max              *prometheus.Desc
	acquires, emptyAcquires, acquireWaitSec *prometheus.Desc
}

func newPoolCollector(s *Server) *poolCollector {
	d := func(name, help string) *prometheus.Desc { return prometheus.NewDesc(name, help, nil, nil) }
	return &poolCollector{
		s:              s,
		total:          d("sidecar_pool_connections", "Open connections of the query pool."),
		idle:           d("sidecar_pool_idle_connections", "Idle connections of the query pool."),
		acquired:       d("sidecar_pool_acquired_connections", "Connections of the query pool in use."),
		max:            d("sidecar_pool_max_connections", "Most connections the query pool may open."),
		acquires:       d("sidecar_pool_acquires_total", "Connections taken from the query pool."),
		emptyAcquires:  d("sidecar_pool_empty_acquires_total", "Acquires that found no idle connection and waited or opened one."),
		acquireWaitSec: d("sidecar_pool_acquire_wait_seconds_total", "Time spent waiting to acquire connections."),
	}
}

func (c *poolCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.total, c.idle, c.acquired, c.max, c.acquires, c.emptyAcquires, c.acquireWaitSec} {
		ch <- d
	}
}

func (c *poolCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.s.pool.Stat()
	gauge := func(d *prometheus.Desc, v float64) { ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v) }
	counter := func(d *prometheus.Desc, v float64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v)
	}
	gauge(c.total, float64(st.TotalConns()))
	gauge(c.idle, float64(st.IdleConns()))
	gauge(c.acquired, float64(st.AcquiredConns()))
	gauge(c.max, float64(st.MaxConns()))
	counter(c.acquires, float64(st.AcquireCount()))
	counter(c.emptyAcquires, float64(st.EmptyAcquireCount()))
	counter(c.acquireWaitSec, st.AcquireDuration().Seconds())
}

// MetricsHandler returns the handler of /metrics, with the bearer token
// check of Config.MetricsToken. Serve mounts it on the main address, or on
// Config.MetricsAddr when that is set; a program that embeds the server
// mounts it where it likes.
func (s *Server) MetricsHandler() http.Handler {
	h := promhttp.HandlerFor(s.metrics.registry, promhttp.HandlerOpts{
		ErrorLog: slogPrinter{s},
	})
	token := s.cfg.MetricsToken
	if token == "" {
		return h
	}
	want := []byte("Bearer " + token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got := []byte(r.Header.Get("Authorization"))
		if subtle.ConstantTimeCompare(got, want) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="metrics"`)
			writeError(w, http.StatusUnauthorized, "invalid_token", "GET /metrics needs the header Authorization: Bearer <--metrics-token>")
			return
		}
		h.ServeHTTP(w, r)
	})
}

// slogPrinter logs promhttp's errors through the server's logger.
type slogPrinter struct{ s *Server }

func (p slogPrinter) Println(v ...any) {
	p.s.log.Warn("serving metrics failed", "component", "metrics", "err", fmt.Sprint(v...))
}

// observeRPC records one call through the sidecar.
func (m *metrics) observeRPC(direction, outcome string, start time.Time) {
	m.rpcCalls.WithLabelValues(direction, outcome).Observe(time.Since(start).Seconds())
}

// eventSource names where a relayed event came from, for eventsIn.
func eventSource(ev store.Event) string {
	switch {
	case strings.HasPrefix(ev.Topic, "db."):
		return sourceTrigger
	case strings.HasPrefix(ev.Topic, "pg."):
		return sourceChannel
	case ev.ID > 0:
		return sourcePublish
	default:
		return sourceBroadcast
	}
}

// Label values of publishes and rpcCalls.
const (
	transportHTTP      = "http"
	transportWebsocket = "websocket"

	directionClientToApp = "client_to_app"
	directionAppToClient = "app_to_client"

	outcomeOK       = "ok"
	outcomeError    = "error"
	outcomeTimeout  = "timeout"
	outcomeNotFound = "not_found"
)

// countPublish counts n events published through transport.
func (m *metrics) countPublish(transport string, n int, ok bool) {
	outcome := outcomeOK
	if !ok {
		outcome = outcomeError
	}
	m.publishes.WithLabelValues(transport, outcome).Add(float64(n))
}

// rpcOutcome names the outcome of a failed call: a timeout, or another
// error.
func rpcOutcome(e *rpc.Error) string {
	if e != nil && strings.Contains(e.Message, "timed out") {
		return outcomeTimeout
	}
	return outcomeError
}
