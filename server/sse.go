package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/pgsidecar/sidecar/auth"
	"github.com/pgsidecar/sidecar/hub"
	"github.com/pgsidecar/sidecar/rpc"
	"github.com/pgsidecar/sidecar/topic"
)

const (
	// sseKeepAlive is the interval of the comment line that keeps proxies
	// from closing a quiet event stream.
	sseKeepAlive = 15 * time.Second

	// sseCloseTimeout bounds the write of the final error event, and so
	// also ends a write that was blocked when the stream was closed.
	sseCloseTimeout = 5 * time.Second

	// closeGoingAway is the code under which the hub closes a stream whose
	// client disconnected. The client never sees it.
	closeGoingAway = 1001
)

// keepAliveBlock is the comment that keeps a quiet stream open. Clients
// ignore comment lines.
var keepAliveBlock = []byte(": keep-alive\n\n")

// serveSSE is the handler of GET /v1/events, the server-sent events
// endpoint for clients that cannot use a websocket. It takes the
// subscription's patterns from repeated topic parameters and authorizes
// them like the websocket's upgrade and subscribe. A missing token without
// anonymous access gets 401, and so does an invalid token. A pattern that
// the claims do not allow gets 403, and an invalid pattern 400. All of
// these are rejected before the stream starts.
//
// The stream then carries one subscription. Its first block is an id line
// alone, the resume point, sent once the subscription is in place.
// Browsers store it as the last event id without dispatching an event, so
// a client that reconnects before any durable event arrived still resumes
// without a gap. Every event follows as "data: <event JSON>" on one line,
// preceded by an id line for durable events. See sseEventID for the id's
// format. The stream ends with an "event: error" block whose data is
// {"code", "message"}: the JSON-RPC code for history expired (-32006) and
// internal errors, or the websocket's close code where a websocket would
// be closed (1008 token expired, 1012 draining, 1013 too slow).
func (s *Server) serveSSE(w http.ResponseWriter, r *http.Request) {
	if !s.admitClient(w, r, "event stream") {
		return
	}

	req, status, code, msg := s.checkSSERequest(r)
	if status != 0 {
		s.log.Info("event stream rejected", "remote", r.RemoteAddr, "status", status, "reason", msg)
		writeError(w, status, code, msg)
		return
	}

	subject := req.claims.Subject
	if !s.acquireConnection(w, subject, "event stream") {
		return
	}
	defer s.conns.release(subject)

	s.runSSE(w, r, req)
}

// sseRequest is a checked GET /v1/events request.
type sseRequest struct {
	claims   *auth.Claims
	topics   []string
	patterns []topic.Pattern
	since    *int64  // the resume point, nil for none
	epoch    *string // the epoch of the resume point, from Last-Event-ID only
}

// checkSSERequest authenticates r and checks its parameters. A non-zero
// status rejects the request with the error code and message.
func (s *Server) checkSSERequest(r *http.Request) (req sseRequest, status int, code, msg string) {
	claims, status, msg := s.upgradeClaims(r)
	if status != 0 {
		return req, status, "invalid_token", msg
	}
	if claims == nil {
		return req, http.StatusUnauthorized, "missing_token",
			"no token: send Authorization: Bearer <token> or the access_token parameter (this sidecar allows no anonymous access)"
	}
	req.claims = claims

	query := r.URL.Query()
	req.topics = query["topic"]
	if len(req.topics) == 0 {
		return req, http.StatusBadRequest, "invalid_topic", "no topic parameter: give at least one pattern, such as ?topic=orders.>"
	}
	if len(req.topics) > maxPatterns {
		return req, http.StatusBadRequest, "invalid_topic",
			fmt.Sprintf("%d topic parameters, over the limit of %d: open several streams", len(req.topics), maxPatterns)
	}
	req.patterns = make([]topic.Pattern, len(req.topics))
	for i, t := range req.topics {
		pat, err := topic.Parse(t)
		if err != nil {
			return req, http.StatusBadRequest, "invalid_topic", err.Error()
		}
		req.patterns[i] = pat
	}
	for _, pat := range req.patterns {
		if !claims.CanSubscribe(pat) {
			return req, http.StatusForbidden, "forbidden", fmt.Sprintf("subscribing to %q is not allowed by your token", pat.String())
		}
	}

	// Last-Event-ID, which browsers send when they reconnect, wins over
	// since, which stays in the URL they reconnect to.
	if lastID := r.Header.Get("Last-Event-ID"); lastID != "" {
		epoch, id, err := parseSSEEventID(lastID)
		if err != nil {
			return req, http.StatusBadRequest, "invalid_last_event_id", err.Error()
		}
		req.since, req.epoch = &id, &epoch
		return req, 0, "", ""
	}
	if query.Has("since") {
		since, err := strconv.ParseInt(query.Get("since"), 10, 64)
		if err != nil || since < 0 {
			return req, http.StatusBadRequest, "invalid_since",
				fmt.Sprintf("since is %.40q: it must be an event id, 0 or above", query.Get("since"))
		}
		req.since = &since
	}
	return req, 0, "", ""
}

// sseEventID returns the value of an event's id line: the epoch, a colon
// and the event id, such as "3f2a9c0d1e4b5a67:42". Clients treat it as
// opaque and send it back as Last-Event-ID, so one header carries the
// resume point and the id space it belongs to, as since and epoch do in
// subscribe.
func sseEventID(epoch string, id int64) string {
	return epoch + ":" + strconv.FormatInt(id, 10)
}

// parseSSEEventID splits a Last-Event-ID made by sseEventID. The id follows
// the last colon, so the epoch may contain colons.
func parseSSEEventID(value string) (epoch string, id int64, err error) {
	i := strings.LastIndexByte(value, ':')
	if i < 0 {
		return "", 0, fmt.Errorf("Last-Event-ID %.80q is not an id this sidecar sent: send back the last id line received, or reconnect without it", value)
	}
	id, err = strconv.ParseInt(value[i+1:], 10, 64)
	if err != nil || id < 0 {
		return "", 0, fmt.Errorf("Last-Event-ID %.80q does not end in an event id: send back the last id line received, or reconnect without it", value)
	}
	return value[:i], id, nil
}

// runSSE streams the events of one checked request until the client
// disconnects or the hub closes the stream.
func (s *Server) runSSE(w http.ResponseWriter, r *http.Request, req sseRequest) {
	requestID := w.Header().Get(echo.HeaderXRequestID)
	log := s.log.With("request_id", requestID, "sub", req.claims.Subject)

	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	// Ask nginx not to buffer the stream.
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)

	sink := newSSESink(w)
	if err := sink.rc.Flush(); err != nil {
		log.Error("event stream cannot be flushed, ending it", "err", err)
		return
	}

	// The epoch is read once, before the subscription, as subscribe does.
	// After an epoch change the stream's ids keep the old epoch, so a
	// client resuming from them gets history expired.
	epoch := s.epoch()
	sink.epoch = epoch

	client := s.hub.Register(sink, slog.String("request_id", requestID), slog.String("sub", req.claims.Subject))
	log.Info("event stream opened", "topics", req.topics, "resumed", req.since != nil)

	stopExpiry := s.closeOnExpiry(client, req.claims, log)
	defer stopExpiry()

	if !s.startSSESubscription(r, client, sink, req, epoch, log) {
		<-client.Done()
		log.Info("event stream closed", "code", sink.closedWith())
		return
	}

	keepAlive := time.NewTicker(sseKeepAlive)
	defer keepAlive.Stop()
	for {
		select {
		case <-client.Done():
			log.Info("event stream closed", "code", sink.closedWith())
			return
		case <-r.Context().Done():
			sink.disconnected.Store(true)
			client.Close(closeGoingAway, "client disconnected")
			<-client.Done()
			log.Info("event stream closed by the client")
			return
		case <-keepAlive.C:
			client.Send(keepAliveBlock)
		}
	}
}

// startSSESubscription subscribes, replays what the client missed, and
// queues the resume point before every event. It returns false when it
// closed the client instead, with an error event.
func (s *Server) startSSESubscription(r *http.Request, client *hub.Client, sink *sseSink, req sseRequest, epoch string, log *slog.Logger) bool {
	var after int64
	if req.since != nil {
		after = *req.since
	}
	sub, watermark := client.Subscribe(req.patterns, after)

	var replay []hub.Event
	resume := watermark
	if req.since != nil {
		// A session value without a connection lends subscribe's checks
		// and replay to the stream, so both give the same errors.
		replayer := &session{srv: s}
		replayer.logPtr.Store(log)
		events, rerr := replayer.replay(r.Context(), req.patterns, *req.since, req.epoch, epoch, watermark)
		if rerr != nil {
			log.Info("event stream cannot resume", "since", *req.since, "code", rerr.Code, "reason", rerr.Message)
			sink.endWith(rerr)
			client.Close(rerr.Code, "")
			return false
		}
		replay, resume = events, *req.since
	}

	client.Send(sseIDBlock(epoch, resume))
	sub.Start(replay)
	return true
}

// closeOnExpiry arms the timer that ends the stream when the token
// expires, with the same clock skew allowance as the token check. The
// client reconnects with a new token. The returned function stops the
// timer.
func (s *Server) closeOnExpiry(client *hub.Client, claims *auth.Claims, log *slog.Logger) (stop func()) {
	if claims.Expires.IsZero() {
		return func() {}
	}
	t := time.AfterFunc(time.Until(claims.Expires)+s.verifier.Leeway(), func() {
		log.Info("token expired, ending the event stream")
		client.Close(int(closePolicy), "token expired: reconnect with a new token")
	})
	return func() { t.Stop() }
}

// sseIDBlock returns a block with an id line alone, which sets the
// client's last event id without dispatching an event.
func sseIDBlock(epoch string, id int64) []byte {
	return []byte("id: " + sseEventID(epoch, id) + "\n\n")
}

// errStreamClosed is returned by writes after the stream has ended.
var errStreamClosed = errors.New("event stream closed")

// sseSink adapts one event stream to the hub. The hub's writer goroutine
// calls Write, and Close or CloseNow may run at the same time from another
// goroutine, so every write to the response holds mu. Every write happens
// before the client's Done channel is closed, which the handler waits for
// before it returns.
type sseSink struct {
	w  http.ResponseWriter
	rc *http.ResponseController
	// epoch is set before the sink is registered with the hub and never
	// changed afterwards.
	epoch string

	// disconnected is set when the client has gone away, so Close writes
	// nothing.
	disconnected atomic.Bool
	// final, when set, is the error that Close sends in place of its code
	// and reason, which must be short enough for a websocket close frame.
	final atomic.Pointer[rpc.Error]

	mu     sync.Mutex
	closed bool
	code   int          // the code Close was called with
	out    bytes.Buffer // the block being encoded
	enc    *json.Encoder
}

func newSSESink(w http.ResponseWriter) *sseSink {
	// echo.Response hides the errors of its Flush, so flush the writer
	// it wraps, which it passes every write to unchanged.
	target := w
	if er, ok := w.(*echo.Response); ok {
		target = er.Writer
	}
	s := &sseSink{w: w, rc: http.NewResponseController(target)}
	s.enc = json.NewEncoder(&s.out)
	s.enc.SetEscapeHTML(false)
	return s
}

// endWith sets the error that Close sends.
func (s *sseSink) endWith(e *rpc.Error) {
	s.final.Store(e)
}

func (s *sseSink) closedWith() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.code
}

// sseEvent is the event JSON of the stream: an event notification's params
// without the subscription, since a stream has exactly one.
type sseEvent struct {
	Topic string          `json:"topic"`
	Data  json.RawMessage `json:"data"`
	ID    int64           `json:"id,omitempty"`
	TS    string          `json:"ts"`
}

// Write writes one message of the hub. A message that starts with '{' is
// a JSON-RPC notification: an event is converted to its SSE block, and
// anything else, such as the websocket heartbeat, is skipped because the
// stream has keep-alive comments of its own. Other messages are SSE text
// from the server and are written as they are.
func (s *sseSink) Write(_ context.Context, msg []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()

	if s.closed {
		return errStreamClosed
	}
	block := msg
	if len(msg) > 0 && msg[0] == '{' {
		var err error
		block, err = s.encodeEventLocked(msg)
		if err != nil || block == nil {
			return err
		}
	}

	if _, err := s.w.Write(block); err != nil {
		return fmt.Errorf("write event stream: %w", err)
	}
	if err := s.rc.Flush(); err != nil {
		return fmt.Errorf("flush event stream: %w", err)
	}
	return nil
}

// encodeEventLocked returns the SSE block of an event notification, or nil
// for another notification. Encoding the data again also compacts it, so
// that JSON with line breaks, as a pg_notify payload may have, stays on
// its data line.
func (s *sseSink) encodeEventLocked(msg []byte) ([]byte, error) {
	var n struct {
		Method string   `json:"method"`
		Params sseEvent `json:"params"`
	}
	if err := json.Unmarshal(msg, &n); err != nil {
		return nil, fmt.Errorf("decode event notification: %w", err)
	}
	if n.Method != "event" {
		return nil, nil
	}

	s.out.Reset()
	if n.Params.ID > 0 {
		s.out.WriteString("id: " + sseEventID(s.epoch, n.Params.ID) + "\n")
	}
	s.out.WriteString("data: ")
	if err := s.enc.Encode(n.Params); err != nil { // Encode ends the line
		return nil, fmt.Errorf("encode event: %w", err)
	}
	s.out.WriteByte('\n')
	return s.out.Bytes(), nil
}

// Close writes the final error event and returns. The deadline it sets
// bounds that write and also ends a Write blocked on a client that stopped
// reading, so that Close can take the lock.
func (s *sseSink) Close(code int, reason string) error {
	deadline := time.Now().Add(sseCloseTimeout)
	if s.disconnected.Load() {
		deadline = time.Now()
	}
	_ = s.rc.SetWriteDeadline(deadline)

	s.mu.Lock()
	defer s.mu.Unlock()

	if s.closed {
		return nil
	}
	s.closed, s.code = true, code
	if s.disconnected.Load() {
		return nil
	}

	e := rpc.Error{Code: code, Message: reason}
	if f := s.final.Load(); f != nil {
		e = *f
	}
	s.out.Reset()
	s.out.WriteString("event: error\ndata: ")
	if err := s.enc.Encode(map[string]any{"code": e.Code, "message": e.Message}); err != nil {
		return fmt.Errorf("encode error event: %w", err)
	}
	s.out.WriteByte('\n')
	if _, err := s.w.Write(s.out.Bytes()); err != nil {
		return fmt.Errorf("write error event: %w", err)
	}
	if err := s.rc.Flush(); err != nil {
		return fmt.Errorf("flush error event: %w", err)
	}

	// The connection may serve another request once this one ends.
	_ = s.rc.SetWriteDeadline(time.Time{})
	return nil
}

// CloseNow ends a blocked write at once and stops further writes.
func (s *sseSink) CloseNow() error {
	err := s.rc.SetWriteDeadline(time.Now())

	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	if err != nil && !errors.Is(err, http.ErrNotSupported) {
		return fmt.Errorf("end event stream: %w", err)
	}
	return nil
}
