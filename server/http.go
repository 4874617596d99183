package server

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"

	"net/http"
	"strings"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/labstack/echo/v4/middleware"

	"github.com/pgsidecar/sidecar/listen"
	"github.com/pgsidecar/sidecar/store"
	"github.com/pgsidecar/sidecar/topic"
)

// maxBatch bounds the events of one POST /v1/publish.
const maxBatch = 1000

func (s *Server) routes() http.Handler {
	e := echo.New()
	e.HideBanner = true
	e.HidePort = true
	e.Logger.SetOutput(io.Discard)

	e.Use(middleware.RequestIDWithConfig(middleware.RequestIDConfig{
		Generator: newClientID,
	}))
	e.Use(middleware.RequestLoggerWithConfig(middleware.RequestLoggerConfig{
		LogStatus: true, LogURIPath: true, LogMethod: true, LogLatency: true, LogRequestID: true,
		LogValuesFunc: func(c echo.Context, v middleware.RequestLoggerValues) error {
			// The path only: a token may ride in the query string. Probes
			// and scrapes come every few seconds, so they are logged at
			// debug level.
			level := slog.LevelInfo
			if v.URIPath == "/readyz" || v.URIPath == "/healthz" || v.URIPath == "/metrics" {
				level = slog.LevelDebug
			}
			s.log.Log(c.Request().Context(), level, "http request", "request_id", v.RequestID, "method", v.Method,
				"path", v.URIPath, "status", v.Status, "duration", v.Latency)
			return nil
		},
	}))
	e.Use(middleware.RecoverWithConfig(middleware.RecoverConfig{
		LogErrorFunc: func(c echo.Context, err error, stack []byte) error {
			s.log.Error("handler panic", "request_id", c.Response().Header().Get(echo.HeaderXRequestID),
				"err", err, "stack", string(stack))
			return err
		},
	}))

	// CORS for the HTTP API, from the same allow-list as the websocket's
	// origin check. The websocket checks origins itself at the upgrade.
	e.Use(middleware.CORSWithConfig(middleware.CORSConfig{
		Skipper: func(c echo.Context) bool {
			p := c.Request().URL.Path
			return p == "/v1/ws" || p == "/pubsub" || p == "/ws" || strings.HasPrefix(p, "/ws/")
		},
		AllowOriginFunc: s.corsOrigin,
		AllowMethods:    []string{http.MethodGet, http.MethodPost, http.MethodOptions},
		AllowHeaders:    []string{"Authorization", "Content-Type", "Idempotency-Key", "Last-Event-ID"},
		MaxAge:          600,
	}))

	e.GET("/healthz", func(c echo.Context) error {
		return c.JSON(http.StatusOK, map[string]string{"status": "ok"})
	})
	e.GET("/readyz", s.readyz)
	if s.cfg.MetricsAddr == "" {
		e.GET("/metrics", echo.WrapHandler(s.MetricsHandler()))
	}
	e.GET("/v1/ws", echo.WrapHandler(http.HandlerFunc(s.serveWS)))
	e.GET("/v1/events", echo.WrapHandler(http.HandlerFunc(s.serveSSE)))

	// The protocols of fastapi_websocket_pubsub and fastapi_websocket_rpc.
	e.GET("/pubsub", echo.WrapHandler(http.HandlerFunc(s.servePubSub)))
	e.GET("/ws", func(c echo.Context) error {
		s.serveFastAPI(c.Response(), c.Request(), modeRPC, "")
		return nil
	})
	e.GET("/ws/:client_id", func(c echo.Context) error {
		s.serveFastAPI(c.Response(), c.Request(), modeRPC, c.Param("client_id"))
		return nil
	})

	api := e.Group("/v1", s.requireAPIKey)
	api.POST("/publish", s.publishHTTP)
	api.POST("/clients/:client_id/call", s.callClientHTTP)
	api.POST("/subjects/call", s.callSubjectHTTP)
	api.GET("/presence", s.presenceHTTP)
	api.GET("/presence/stats", s.presenceStatsHTTP)
	api.GET("/history", s.historyHTTP)

	e.HTTPErrorHandler = func(err error, c echo.Context) {
		if c.Response().Committed {
			return
		}
		var he *echo.HTTPError
		if errors.As(err, &he) {
			code, msg := "http_error", http.StatusText(he.Code)
			switch he.Code {
			case http.StatusNotFound:
				code, msg = "not_found", "no such endpoint: "+c.Request().Method+" "+c.Request().URL.Path
			case http.StatusMethodNotAllowed:
				code, msg = "method_not_allowed", c.Request().Method+" is not allowed on "+c.Request().URL.Path
			}
			writeError(c.Response(), he.Code, code, msg)
			return
		}
		s.log.Error("http handler failed", "request_id", c.Response().Header().Get(echo.HeaderXRequestID), "err", err)
		writeError(c.Response(), http.StatusInternalServerError, "internal", "internal error")
	}
	return e
}

// writeError writes the HTTP API's error body.
func writeError(w http.ResponseWriter, status int, code, message string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(map[string]any{"error": map[string]string{"code": code, "message": message}})
}

func apiError(c echo.Context, status int, code, message string) error {
	writeError(c.Response(), status, code, message)
	return nil
}

func (s *Server) requireAPIKey(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		key, ok := strings.CutPrefix(c.Request().Header.Get("Authorization"), "Bearer ")
		if !ok || !s.apiKeys.Valid(key) {
			s.metrics.refused.WithLabelValues("api_key").Inc()
			return apiError(c, http.StatusUnauthorized, "unauthorized", "missing or wrong API key: send Authorization: Bearer <key> with a key from --api-keys")
		}
		return next(c)
	}
}

// readiness is the body of /readyz.
type readiness struct {
	Ready    bool          `json:"ready"`
	Started  bool          `json:"started"`
	Draining bool          `json:"draining"`
	Epoch    string        `json:"epoch,omitempty"`
	Listener listenerState `json:"listener"`
	// NotifyQueueUsage is pg_notification_queue_usage(), sampled every 5 s.
	NotifyQueueUsage float64 `json:"notify_queue_usage"`
}

type listenerState struct {
	Connected  bool      `json:"connected"`
	Since      time.Time `json:"since"`
	LastError  string    `json:"last_error,omitempty"`
	Reconnects uint64    `json:"reconnects"`
}

// readyz is 503 until the first start completes and while draining. A
// later Postgres outage shows in the body at once but turns the status to
// 503 only after UnreadyAfter, because an unready sidecar takes its whole
// pod out of service.
// ready reports whether /readyz returns 200: started, not draining, and
// the LISTEN connection not down for longer than UnreadyAfter.
func (s *Server) ready() bool {
	return s.readyFor(s.listener.Status())
}

func (s *Server) readyFor(st listen.Status) bool {
	outage := !st.Connected && time.Since(st.Since) > s.cfg.UnreadyAfter
	return s.started.Load() && !s.draining.Load() && !outage
}

// notifyQueueUsage returns the last reading of Postgres' notification queue
// fill level.
func (s *Server) notifyQueueUsage() float64 {
	return math.Float64frombits(s.notifyQueue.Load())
}

func (s *Server) readyz(c echo.Context) error {
	st := s.listener.Status()
	r := readiness{
		Started:  s.started.Load(),
		Draining: s.draining.Load(),
		Epoch:    s.epoch(),
		Listener: listenerState{Connected: st.Connected, Since: st.Since, LastError: st.LastError, Reconnects: st.Reconnects},

		NotifyQueueUsage: math.Float64frombits(s.notifyQueue.Load()),
	}
	r.Ready = s.readyFor(st)

	status := http.StatusOK
	if !r.Ready {
		status = http.StatusServiceUnavailable
	}
	return c.JSON(status, r)
}

type publishRequest struct {
	publishItem
	Events []publishItem `json:"events"`
}

type publishItem struct {
	Topic   *string         `json:"topic"`
	Data    json.RawMessage `json:"data"`
	Durable *bool           `json:"durable"`
}

// publishHTTP is POST /v1/publish: one event, or several in one
// transaction with {"events": [...]}.
func (s *Server) publishHTTP(c echo.Context) error {
	if !s.started.Load() || s.draining.Load() {
		return apiError(c, http.StatusServiceUnavailable, "not_ready", "the sidecar is starting or draining: retry shortly")
	}

	limit := int64(maxBatch)*int64(s.cfg.MaxEventBytes) + 64<<10
	limit = min(limit, 64<<20)
	body, err := io.ReadAll(http.MaxBytesReader(c.Response(), c.Request().Body, limit))
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			return apiError(c, http.StatusRequestEntityTooLarge, "body_too_large", "request body is over the limit of "+itoa(limit)+" bytes")
		}
		return apiError(c, http.StatusBadRequest, "invalid_body", "could not read the request body")
	}

	var req publishRequest
	if err := json.Unmarshal(body, &req); err != nil {
		return apiError(c, http.StatusBadRequest, "invalid_json", describeJSONError(err))
	}

	batch := req.Events != nil
	if batch && (req.Topic != nil || req.Data != nil || req.Durable != nil) {
		return apiError(c, http.StatusBadRequest, "invalid_body", `give either "events" or one event's "topic", "data" and "durable", not both`)
	}
	items := req.Events
	if !batch {
		items = []publishItem{req.publishItem}
	}
	if len(items) == 0 {
		return apiError(c, http.StatusBadRequest, "invalid_events", `"events" is empty: give at least one event`)
	}
	if len(items) > maxBatch {
		return apiError(c, http.StatusBadRequest, "invalid_events", `"events" has `+itoa(int64(len(items)))+" entries, over the limit of "+itoa(maxBatch))
	}

	pubs := make([]store.Publication, len(items))
	for i, it := range items {
		where := "event"
		if batch {
			where = "events[" + itoa(int64(i)) + "]"
		}
		if it.Topic == nil {
			return apiError(c, http.StatusBadRequest, "invalid_topic", where+`: "topic" is missing`)
		}
		if err := topic.Validate(*it.Topic); err != nil {
			return apiError(c, http.StatusBadRequest, "invalid_topic", where+": "+err.Error())
		}
		if it.Data == nil {
			return apiError(c, http.StatusBadRequest, "invalid_data", where+`: "data" is missing: give any JSON value, null included`)
		}
		pubs[i] = store.Publication{Topic: *it.Topic, Data: it.Data, Durable: it.Durable == nil || *it.Durable}
	}

	key := c.Request().Header.Get("Idempotency-Key")
	if err := checkIdempotencyKey(key); err != nil {
		return apiError(c, http.StatusBadRequest, "invalid_idempotency_key", err.Error())
	}
	sum := sha256.Sum256(body)

	ids, err := s.store.PublishIdempotent(c.Request().Context(), pubs, key, hex.EncodeToString(sum[:]))
	s.metrics.countPublish(transportHTTP, len(pubs), err == nil)
	if err != nil {
		return s.publishFailed(c, err)
	}

	if !batch {
		if !pubs[0].Durable {
			return c.JSON(http.StatusOK, struct{}{})
		}
		return c.JSON(http.StatusOK, map[string]int64{"id": ids[0]})
	}
	out := make([]*int64, len(ids))
	for i := range ids {
		if pubs[i].Durable {
			out[i] = &ids[i]
		}
	}
	return c.JSON(http.StatusOK, map[string]any{"ids": out})
}

func (s *Server) publishFailed(c echo.Context, err error) error {
	switch {
	case errors.Is(err, store.ErrTooLarge):
		return apiError(c, http.StatusRequestEntityTooLarge, "event_too_large", strings.TrimPrefix(err.Error(), "event too large: "))
	case errors.Is(err, store.ErrInvalid):
		return apiError(c, http.StatusBadRequest, "invalid_event", strings.TrimPrefix(err.Error(), "invalid event: "))
	case errors.Is(err, store.ErrKeyReused):
		return apiError(c, http.StatusUnprocessableEntity, "idempotency_key_reused", strings.TrimPrefix(err.Error(), store.ErrKeyReused.Error()+": ")+": use a new Idempotency-Key for a new request")
	case errors.Is(err, store.ErrRejected):
		s.log.Error("publish rejected by Postgres", "request_id", c.Response().Header().Get(echo.HeaderXRequestID), "err", err)
		return apiError(c, http.StatusInternalServerError, "database_error", "Postgres rejected the publish; the sidecar's log has the details (search for the request id)")
	}
	if errors.Is(err, store.ErrUncertain) {
		s.log.Error("publish outcome unknown", "request_id", c.Response().Header().Get(echo.HeaderXRequestID), "err", err)
		return apiError(c, http.StatusServiceUnavailable, "outcome_unknown", "the connection to Postgres failed during the publish, so it may or may not have been committed: retry with the same Idempotency-Key to publish exactly once")
	}
	s.log.Error("publish failed", "request_id", c.Response().Header().Get(echo.HeaderXRequestID), "err", err)
	return apiError(c, http.StatusServiceUnavailable, "database_unavailable", "the event was not published because Postgres could not be reached: retry")
}

func itoa(n int64) string {
	b, _ := json.Marshal(n)
	return string(b)
}

// describeJSONError turns a decoding error of the publish body into a
// sentence in JSON's terms rather than Go's.
func describeJSONError(err error) string {
	const shape = `the body must be a JSON object {"topic", "data", "durable"} or {"events": [...]}`
	var typeErr *json.UnmarshalTypeError
	if errors.As(err, &typeErr) {
		want := map[string]string{"topic": "a string", "durable": "true or false", "events": "an array of events"}
		field := typeErr.Field
		if i := strings.LastIndexByte(field, '.'); i >= 0 {
			field = field[i+1:]
		}
		if w, ok := want[field]; ok {
			return fmt.Sprintf("%q must be %s, not a JSON %s", typeErr.Field, w, typeErr.Value)
		}
		return fmt.Sprintf("a JSON %s is not allowed here: %s", typeErr.Value, shape)
	}
	return "the body is not valid JSON: " + shape
}

// checkIdempotencyKey accepts an empty key (none given) or 1 to 255
// printable ASCII characters.
func checkIdempotencyKey(key string) error {
	if len(key) > 255 {
		return fmt.Errorf("Idempotency-Key is %d bytes, over the limit of 255", len(key))
	}
	for i := 0; i < len(key); i++ {
		if key[i] < 0x21 || key[i] > 0x7e {
			return fmt.Errorf("Idempotency-Key has a character outside printable ASCII at byte %d: use letters, digits and punctuation, such as a UUID", i)
		}
	}
	return nil
}
