package server

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/coder/websocket"

	"github.com/pgsidecar/sidecar/auth"
	"github.com/pgsidecar/sidecar/hub"
	"github.com/pgsidecar/sidecar/rpc"
	"github.com/pgsidecar/sidecar/topic"
)

// Close codes of the websocket protocol.
const (
	closeBinary      = websocket.StatusUnsupportedData         // 1003
	closeInvalidUTF8 = websocket.StatusInvalidFramePayloadData // 1007
	closePolicy      = websocket.StatusPolicyViolation         // 1008
	closeTooBig      = websocket.StatusMessageTooBig           // 1009
	closeDraining    = websocket.StatusServiceRestart          // 1012
	closeTooSlow     = websocket.StatusTryAgainLater           // 1013
)

// session is one websocket connection. Its read loop runs on a goroutine
// of its own, started once the connection is upgraded. The HTTP handler's
// goroutine, with the stack it grew during the handshake, and the request's
// objects are then released. Requests that wait on Postgres run on
// goroutines of their own, at most Config.MaxInFlight at a time.
type session struct {
	srv    *Server
	conn   *websocket.Conn
	client *hub.Client
	id     string
	// logPtr is the session's logger, with its client id and, once known,
	// its token subject. Use logger().
	logPtr atomic.Pointer[slog.Logger]

	claims atomic.Pointer[auth.Claims] // nil until authenticated

	// lastPublish is closed when the previous publish of this connection
	// has finished, so publishes commit in the order they arrived. Only
	// the read loop touches it.
	lastPublish chan struct{}

	// subs lists the patterns of each subscription, so that a token
	// refresh can remove what the new token no longer allows.
	subsMu sync.Mutex
	subs   map[string][]topic.Pattern

	// lateSubject is the subject counted against its connection limit by
	// an auth message; the connection releases it when it ends.
	lateSubject string

	// guard limits the client's requests per second.
	guard *messageGuard

	// peer sends the application's requests to this client and matches
	// the client's responses to them.
	peer *rpc.Peer

	// presence lists the topics the client joined.
	presence joinedTopics

	authTimer   *time.Timer
	expiryTimer atomic.Pointer[time.Timer]
}

// serveWS is the handler of GET /v1/ws.
func (s *Server) serveWS(w http.ResponseWriter, r *http.Request) {
	if !s.admitClient(w, r, "websocket") {
		return
	}

	// A present but invalid token is refused before the upgrade and never
	// falls back to anonymous access.
	claims, status, msg := s.upgradeClaims(r)
	if status != 0 {
		s.metrics.refused.WithLabelValues("token").Inc()
		s.log.Info("websocket token rejected", "remote", r.RemoteAddr, "reason", msg)
		writeError(w, status, "invalid_token", msg)
		return
	}

	subject := ""
	if claims != nil {
		subject = claims.Subject
	}
	if !s.acquireConnection(w, subject, "websocket") {
		return
	}

	// The origin was checked above, with the same rules as the library's
	// own check and an error that names the setting.
	conn, err := websocket.Accept(smallReadBuffer{w}, r, &websocket.AcceptOptions{InsecureSkipVerify: true})
	if err != nil {
		// Accept has written the HTTP error response.
		s.conns.release(subject)
		s.log.Info("websocket upgrade failed", "remote", r.RemoteAddr, "err", err)
		return
	}
	conn.SetReadLimit(s.cfg.readLimit())

	sess := &session{srv: s, conn: conn, id: s.instance + randomID(16), lastPublish: closedChan(),
		guard: newMessageGuard(s.cfg.MessageRate, s.cfg.MessageBurst)}
	sess.logPtr.Store(s.log.With("client_id", sess.id, "sub", subject))
	if claims != nil {
		// The expiry timer is armed once the hub client exists.
		sess.claims.Store(claims)
	}

	s.startSessionLoop(conn, subject, func() { s.runSession(sess) })
}

// startSessionLoop runs run on a goroutine that drain waits for, because
// the hijacked connection outlives the handler, and releases subject's
// connection count when run returns. Once drain has begun, it closes conn
// with 1012 instead.
func (s *Server) startSessionLoop(conn *websocket.Conn, subject string, run func()) {
	s.loopsMu.Lock()
	started := !s.loopsClosed
	if started {
		s.sessionLoops.Go(func() {
			defer s.conns.release(subject)
			run()
		})
	}
	s.loopsMu.Unlock()

	if !started {
		s.conns.release(subject)
		_ = conn.Close(closeDraining, "sidecar restarting: reconnect")
	}
}

func (s *Server) runSession(sess *session) {
	ctx, cancel := context.WithCancel(s.ctx)
	defer cancel()

	sink := &wsSink{conn: sess.conn}
	sess.client = s.hub.Register(sink, slog.String("client_id", sess.id), slog.String("sub", sess.subject()))
	sess.logger().Info("client connected")
	if c := sess.claims.Load(); c != nil {
		sess.setClaims(c)
	}

	sess.client.Send(rpc.EncodeNotification("welcome", map[string]any{
		"client_id":   sess.id,
		"epoch":       s.epoch(),
		"version":     s.cfg.Version,
		"heartbeat_s": int(s.cfg.Heartbeat / time.Second),
	}))

	if sess.claims.Load() == nil {
		sess.authTimer = time.AfterFunc(s.cfg.AuthTimeout, func() {
			if sess.claims.Load() == nil {
				sess.logger().Info("client did not authenticate in time", "timeout", s.cfg.AuthTimeout)
				sess.client.Close(int(closePolicy), "authentication timed out")
			}
		})
	}

	sess.peer = rpc.NewPeer(rpc.PeerConfig{
		Send: func(msg []byte) error {
			if !sess.client.Send(msg) {
				return errClientGone
			}
			return nil
		},
		MaxInFlight: s.cfg.MaxInFlight,
		Logger:      sess.logger(),
	})
	sess.peer.SetPreparer(sess.prepareMessage)
	s.sessions.add(sess)
	s.sessions.setSubject(sess, sess.subject())
	reason := sess.readLoop(ctx)
	sess.leaveAll(ctx)
	s.sessions.remove(sess)
	sess.peer.Close(errClientGone)
	s.conns.releaseSubject(sess.lateSubject)
	sess.stopTimers()
	cancel()
	sess.peer.Wait()
	<-sess.client.Done()
	sess.logger().Info("client disconnected", "reason", reason)
}

// readLoop reads messages until the connection ends and returns why.
func (sess *session) readLoop(ctx context.Context) string {
	for {
		typ, msg, err := sess.conn.Read(ctx)
		if err != nil {
			return sess.readFailed(err)
		}
		if typ != websocket.MessageText {
			sess.client.Close(int(closeBinary), "binary frames are not supported: send JSON-RPC as text")
			return "binary frame"
		}
		if !utf8.Valid(msg) {
			sess.client.Close(int(closeInvalidUTF8), "message is not valid UTF-8")
			return "invalid UTF-8"
		}
		sess.handle(ctx, msg)
	}
}

func (sess *session) readFailed(err error) string {
	if code, ok := sess.client.ClosedWith(); ok {
		// The sidecar closed first, and the client echoed its close frame.
		return "closed by the sidecar with " + websocket.StatusCode(code).String()
	}
	switch status := websocket.CloseStatus(err); {
	case status != -1:
		sess.client.Close(int(status), "")
		return "client closed with " + status.String()
	case errors.Is(err, websocket.ErrMessageTooBig) || isTooBig(err):
		// The library has already sent the close frame with 1009.
		sess.client.Close(int(closeTooBig), "message over the read limit")
		return "message over the read limit"
	default:
		sess.client.Close(int(websocket.StatusGoingAway), "")
		return "connection lost: " + err.Error()
	}
}

func isTooBig(err error) bool {
	var ce websocket.CloseError
	return errors.As(err, &ce) && ce.Code == closeTooBig
}

func (sess *session) stopTimers() {
	if sess.authTimer != nil {
		sess.authTimer.Stop()
	}
	if t := sess.expiryTimer.Load(); t != nil {
		t.Stop()
	}
}

// admitClient checks what a websocket upgrade and an event stream request
// have in common: the sidecar is started and not draining, and the origin
// is allowed. Otherwise it writes the error response and returns false.
// kind names the request in log lines.
func (s *Server) admitClient(w http.ResponseWriter, r *http.Request, kind string) bool {
	if s.draining.Load() {
		s.metrics.refused.WithLabelValues("draining").Inc()
		writeError(w, http.StatusServiceUnavailable, "draining", "this sidecar is shutting down: connect to another instance")
		return false
	}
	if !s.started.Load() {
		s.metrics.refused.WithLabelValues("not_ready").Inc()
		writeError(w, http.StatusServiceUnavailable, "not_ready", "this sidecar is starting: retry shortly")
		return false
	}
	if !s.originAllowed(r) {
		s.metrics.refused.WithLabelValues("origin").Inc()
		s.log.Info(kind+" origin rejected", "remote", r.RemoteAddr, "origin", r.Header.Get("Origin"))
		writeError(w, http.StatusForbidden, "origin_not_allowed",
			"origin "+r.Header.Get("Origin")+" is not allowed: add it to --allowed-origins (SIDECAR_ALLOWED_ORIGINS)")
		return false
	}
	return true
}

// acquireConnection counts a new websocket or event stream of subject
// against --max-connections and --max-connections-per-subject. Over a limit
// it writes 503 or 429 and returns false. The caller releases what it
// acquired with s.conns.release(subject).
func (s *Server) acquireConnection(w http.ResponseWriter, subject, kind string) bool {
	switch s.conns.acquire(subject, s.cfg.MaxConnections, s.cfg.MaxConnectionsPerSubject) {
	case "total":
		s.metrics.refused.WithLabelValues("connection_limit").Inc()
		s.log.Warn(kind+" rejected: connection limit reached", "limit", s.cfg.MaxConnections)
		writeError(w, http.StatusServiceUnavailable, "too_many_connections", "this sidecar has reached --max-connections: connect to another instance or retry later")
		return false
	case "subject":
		s.metrics.refused.WithLabelValues("subject_limit").Inc()
		s.log.Info(kind+" rejected: subject at its connection limit", "sub", subject, "limit", s.cfg.MaxConnectionsPerSubject)
		writeError(w, http.StatusTooManyRequests, "too_many_connections", "this token's subject already has the maximum number of connections (--max-connections-per-subject): close one first")
		return false
	}
	return true
}

// noTokenKeys is the error for a token given to a sidecar that has no key
// to check it.
const noTokenKeys = "this sidecar accepts no client tokens: it was started without --jwt-secret, --jwt-public-key-file or --jwks-file"

// upgradeClaims returns the claims a new connection starts with: its
// token's, the anonymous ones, or nil (authenticate with an auth message).
// A non-zero status means the upgrade is refused with that message.
func (s *Server) upgradeClaims(r *http.Request) (*auth.Claims, int, string) {
	_, inHeader := auth.BearerToken(r.Header.Get("Authorization"))
	inQuery := r.URL.Query().Has("access_token")
	if inHeader && inQuery {
		return nil, http.StatusUnauthorized, "give the token either in the Authorization header or as access_token, not both"
	}

	token, ok := auth.TokenFromRequest(r)
	if !ok {
		return s.anonymous, 0, ""
	}
	if s.verifier == nil {
		return nil, http.StatusUnauthorized, noTokenKeys
	}
	c, err := s.verifier.Verify(token)
	if err != nil {
		return nil, http.StatusUnauthorized, err.Error()
	}
	return c, 0, ""
}

// setClaims authenticates the connection and arms the timer that closes it
// with 1008 when the token expires. The timer allows the same clock skew as
// the token check, so a token accepted just after its exp is not closed at
// once.
func (sess *session) setClaims(c *auth.Claims) {
	if old := sess.claims.Swap(c); old == nil || old.Subject != c.Subject {
		sess.logPtr.Store(sess.srv.log.With("client_id", sess.id, "sub", c.Subject))
	}
	if c.Expires.IsZero() {
		return
	}

	t := time.AfterFunc(time.Until(c.Expires)+sess.srv.verifier.Leeway(), func() {
		if sess.claims.Load() == c {
			sess.logger().Info("token expired")
			sess.client.Close(int(closePolicy), "token expired")
		}
	})
	if old := sess.expiryTimer.Swap(t); old != nil {
		old.Stop()
	}
}

func (sess *session) subject() string {
	if c := sess.claims.Load(); c != nil {
		return c.Subject
	}
	return ""
}

// newClientID returns 128 random bits, URL-safe.
func newClientID() string {
	return randomID(16)
}

// randomID returns n random bytes, URL-safe: letters, digits, - and _.
func randomID(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

func closedChan() chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}

// wsReadBufferSize is the read buffer of an upgraded connection. Client
// messages are small, so a buffer of net/http's 4 KiB mostly sits idle
// beside each connection; a larger message costs a few more reads.
const wsReadBufferSize = 512

// smallReadBuffer hands the websocket library a read buffer of
// wsReadBufferSize when it hijacks the connection, instead of net/http's.
// It keeps net/http's write buffer, so that each message is still one
// write to the socket.
type smallReadBuffer struct {
	http.ResponseWriter
}

func (w smallReadBuffer) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn, brw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}

	// Bytes that the client sent after its request are already in
	// net/http's buffer; the new buffer starts with them.
	n := brw.Reader.Buffered()
	if n > wsReadBufferSize {
		return conn, brw, nil
	}
	early, _ := brw.Reader.Peek(n)
	early = bytes.Clone(early)
	r := bufio.NewReaderSize(io.MultiReader(bytes.NewReader(early), conn), wsReadBufferSize)
	if n > 0 {
		if _, err := r.Peek(n); err != nil {
			conn.Close()
			return nil, nil, fmt.Errorf("move buffered bytes: %w", err)
		}
	}
	return conn, bufio.NewReadWriter(r, brw.Writer), nil
}

// wsSink adapts a websocket connection to the hub.
type wsSink struct {
	conn *websocket.Conn
}

// Write ignores ctx: the hub cancels it only after Close or CloseNow, which
// end a blocked write anyway, and a context that can be cancelled costs the
// websocket library a callback registration on every write.
func (w *wsSink) Write(_ context.Context, msg []byte) error {
	return w.conn.Write(context.Background(), websocket.MessageText, msg)
}

func (w *wsSink) Close(code int, reason string) error {
	return w.conn.Close(websocket.StatusCode(code), reason)
}

func (w *wsSink) CloseNow() error { return w.conn.CloseNow() }

// logger returns the session's logger.
func (sess *session) logger() *slog.Logger {
	return sess.logPtr.Load()
}
