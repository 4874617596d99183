package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	jsonv2 "github.com/go-json-experiment/json"

	"github.com/pgsidecar/sidecar/appcall"
	"github.com/pgsidecar/sidecar/fastapiws"
	"github.com/pgsidecar/sidecar/hub"
	"github.com/pgsidecar/sidecar/rpc"
	"github.com/pgsidecar/sidecar/store"
	"github.com/pgsidecar/sidecar/topic"
)

// The fastapi endpoints speak the protocol of the Python libraries
// fastapi_websocket_rpc (/ws, /ws/{client_id}) and fastapi_websocket_pubsub
// (/pubsub) on the same hub, authorization and durable events as /v1/ws.
// Unlike their servers, the sidecar handles the requests of one connection
// concurrently, delivers notify through the connection's bounded queue
// without waiting for the client's reply, and returns errors in band.

// fastapiMode selects the methods an endpoint offers.
type fastapiMode int

const (
	modePubSub fastapiMode = iota // subscribe, unsubscribe, publish, ping
	modeRPC                       // the application's methods
)

// peerCallPrefix starts the call_id of the sidecar's own calls of a
// client, so that their responses go to the RPC peer, and the responses to
// notify, which start with notifyCallPrefix, are dropped.
const (
	peerCallPrefix   = "sc-"
	notifyCallPrefix = "sn-"
)

// errKeywordArgsOnly rejects an application's call of a fastapi client
// with positional params.
var errKeywordArgsOnly = errors.New("fastapi clients take keyword arguments only: give params as a JSON object")

// fastapiSession is one connection of a fastapi client.
type fastapiSession struct {
	sess  *session
	mode  fastapiMode
	label string // the client_id of /ws/{client_id}, for logs only

	// binary is true when the client's last frame was binary; replies use
	// the frame type of the client's last frame.
	binary atomic.Bool

	notifySeq atomic.Uint64

	mu sync.Mutex
	// subs maps each subscribed topic (or fastapiws.AllTopics) to its hub
	// subscription, and topicOf maps the hub subscription id back.
	subs    map[string]*hub.Subscription
	topicOf map[string]string
	// publishing counts this connection's publishes in flight, and own
	// holds the ids of durable events it published for itself, which it
	// does not receive (their servers' notifier_id rule).
	publishing int
	published  chan struct{} // closed and replaced when publishing drops to 0
	own        map[int64]bool

	inFlight chan struct{} // semaphore of concurrent requests
	// lastPublish is closed when the previous publish of this connection
	// has finished, so publishes commit in the order they arrived. Only
	// the read loop touches it.
	lastPublish chan struct{}
}

func (s *Server) servePubSub(w http.ResponseWriter, r *http.Request) {
	s.serveFastAPI(w, r, modePubSub, "")
}

func (s *Server) serveFastAPI(w http.ResponseWriter, r *http.Request, mode fastapiMode, label string) {
	if !s.admitClient(w, r, "fastapi websocket") {
		return
	}
	claims, status, msg := s.upgradeClaims(r)
	if status == 0 && claims == nil {
		status, msg = http.StatusUnauthorized, "no token: send Authorization: Bearer <token> or the access_token parameter (this sidecar allows no anonymous access)"
	}
	if status != 0 {
		s.metrics.refused.WithLabelValues("token").Inc()
		s.log.Info("fastapi websocket token rejected", "remote", r.RemoteAddr, "reason", msg)
		writeError(w, status, "invalid_token", msg)
		return
	}
	if !s.acquireConnection(w, claims.Subject, "fastapi websocket") {
		return
	}

	conn, err := websocket.Accept(smallReadBuffer{w}, r, &websocket.AcceptOptions{InsecureSkipVerify: true})
	if err != nil {
		s.conns.release(claims.Subject)
		s.log.Info("fastapi websocket upgrade failed", "remote", r.RemoteAddr, "err", err)
		return
	}
	conn.SetReadLimit(s.cfg.readLimit())

	sess := &session{srv: s, conn: conn, id: s.instance + randomID(16), lastPublish: closedChan(),
		guard: newMessageGuard(s.cfg.MessageRate, s.cfg.MessageBurst)}
	attrs := []any{"client_id", sess.id, "sub", claims.Subject, "protocol", "fastapi"}
	if label != "" {
		attrs = append(attrs, "path_client_id", label)
	}
	sess.logPtr.Store(s.log.With(attrs...))
	sess.claims.Store(claims)
	fs := &fastapiSession{
		sess: sess, mode: mode, label: label,
		subs: map[string]*hub.Subscription{}, topicOf: map[string]string{},
		published: make(chan struct{}), own: map[int64]bool{},
		inFlight: make(chan struct{}, s.cfg.MaxInFlight), lastPublish: closedChan(),
	}

	s.startSessionLoop(conn, claims.Subject, func() { s.runFastAPISession(fs) })
}

func (s *Server) runFastAPISession(fs *fastapiSession) {
	sess := fs.sess
	ctx, cancel := context.WithCancel(s.ctx)
	defer cancel()

	sess.client = s.hub.Register(&fastapiSink{conn: sess.conn, fs: fs, closed: make(chan struct{})}, slog.String("client_id", sess.id), slog.String("sub", sess.subject()))
	sess.logger().Info("client connected")
	sess.setClaims(sess.claims.Load())

	sess.peer = rpc.NewPeer(rpc.PeerConfig{
		Send:        fs.sendPeerMessage,
		MaxInFlight: s.cfg.MaxInFlight,
		Logger:      sess.logger(),
	})
	s.sessions.add(sess)
	s.sessions.setSubject(sess, sess.subject())

	reason := fs.readLoop(ctx)

	s.sessions.remove(sess)
	sess.peer.Close(errClientGone)
	sess.stopTimers()
	cancel()
	sess.peer.Wait()
	<-sess.client.Done()
	sess.logger().Info("client disconnected", "reason", reason)
}

// readLoop reads frames until the connection ends and returns why. Each
// request runs on a goroutine of its own, at most MaxInFlight at a time,
// and publishes run one after another in the order they arrived.
func (fs *fastapiSession) readLoop(ctx context.Context) string {
	sess := fs.sess
	var wg sync.WaitGroup
	defer wg.Wait()

	for {
		typ, msg, err := sess.conn.Read(ctx)
		if err != nil {
			return sess.readFailed(err)
		}
		fs.binary.Store(typ == websocket.MessageBinary)

		m, err := fastapiws.Decode(msg)
		if err != nil {
			// Their servers close the connection here; the sidecar logs
			// and goes on, because it cannot tell which call the message
			// belonged to.
			sess.logger().Info("ignored a message that is not of the fastapi protocol", "err", err)
			continue
		}
		if m.Request != nil {
			req := *m.Request
			prev, done := closedChan(), make(chan struct{})
			if req.Method == "publish" {
				prev, fs.lastPublish = fs.lastPublish, done
			}
			select {
			case fs.inFlight <- struct{}{}:
				wg.Go(func() {
					defer func() { <-fs.inFlight }()
					defer close(done)
					<-prev
					fs.handle(ctx, req)
				})
			default:
				// A publish that does not run must not hold up the next one.
				go func() {
					<-prev
					close(done)
				}()
				fs.reply(req, json.RawMessage("null"), "", &fastapiws.Error{Code: rpc.CodeRateLimited,
					Message: fmt.Sprintf("more than %d requests in flight on this connection: wait for some to finish", cap(fs.inFlight))})
			}
		}
		if m.Response != nil {
			fs.handleResponse(ctx, *m.Response)
		}
	}
}

// handleResponse passes the response to one of the sidecar's own calls to
// the RPC peer, and drops the replies to notify.
func (fs *fastapiSession) handleResponse(ctx context.Context, resp fastapiws.Response) {
	id, ok := strings.CutPrefix(resp.CallID, peerCallPrefix)
	if !ok || !resp.HasCallID {
		return
	}
	var msg []byte
	if resp.Error != nil {
		msg = rpc.EncodeError(json.RawMessage(id), rpc.Errorf(resp.Error.Code, "%s", resp.Error.Message))
	} else {
		msg = []byte(`{"jsonrpc":"2.0","id":` + id + `,"result":` + string(resp.Result) + `}`)
	}
	fs.sess.peer.Receive(ctx, msg)
}

// sendPeerMessage is the RPC peer's Send: it turns the peer's JSON-RPC
// requests, the application's calls of this client, into fastapi requests.
func (fs *fastapiSession) sendPeerMessage(msg []byte) error {
	m, rerr := rpc.Decode(msg)
	if rerr != nil || m.Kind != rpc.KindRequest {
		return fmt.Errorf("fastapi clients take only requests from the sidecar")
	}
	args := m.Params
	if len(args) > 0 && bytes.TrimSpace(args)[0] != '{' {
		return errKeywordArgsOnly
	}
	if !fs.sess.client.Send(fastapiws.EncodeRequest(m.Method, args, peerCallPrefix+string(m.ID))) {
		return errClientGone
	}
	return nil
}

// handle runs one request and sends its response.
func (fs *fastapiSession) handle(ctx context.Context, req fastapiws.Request) {
	sess := fs.sess
	if ok, abusive := sess.guard.allow(); !ok {
		sess.srv.metrics.refused.WithLabelValues("rate_limited").Inc()
		if abusive {
			sess.logger().Warn("closing a client that keeps sending over its message rate", "rate", sess.srv.cfg.MessageRate)
			sess.client.Close(int(closePolicy), "message rate exceeded")
		}
		fs.reply(req, json.RawMessage("null"), "", &fastapiws.Error{Code: rpc.CodeRateLimited,
			Message: fmt.Sprintf("more than %g requests per second on this connection: slow down", sess.srv.cfg.MessageRate)})
		return
	}

	switch req.Method {
	case "_ping_":
		fs.reply(req, json.RawMessage(`"pong"`), "str", nil)
		return
	case "_get_channel_id_":
		fs.reply(req, jsonString(sess.id), "str", nil)
		return
	}
	if strings.HasPrefix(req.Method, "_") {
		fs.reply(req, json.RawMessage("null"), "", &fastapiws.Error{Code: rpc.CodeMethodNotFound,
			Message: fmt.Sprintf("method %q not found: names starting with _ are reserved", req.Method)})
		return
	}

	if fs.mode == modePubSub {
		fs.handlePubSub(ctx, req)
		return
	}
	fs.handleAppCall(ctx, req)
}

func (fs *fastapiSession) handlePubSub(ctx context.Context, req fastapiws.Request) {
	switch req.Method {
	case "ping":
		fs.reply(req, json.RawMessage(`"pong"`), "str", nil)
	case "subscribe":
		ok, e := fs.subscribe(req.Arguments)
		fs.reply(req, jsonBool(ok), "bool", e)
	case "unsubscribe":
		e := fs.unsubscribe(req.Arguments)
		fs.reply(req, jsonBool(true), "bool", e)
	case "publish":
		ok, e := fs.publish(ctx, req.Arguments)
		fs.reply(req, jsonBool(ok), "bool", e)
	default:
		fs.reply(req, json.RawMessage("null"), "", &fastapiws.Error{Code: rpc.CodeMethodNotFound,
			Message: fmt.Sprintf("method %q not found: /pubsub offers subscribe, unsubscribe, publish and ping", req.Method)})
	}
}

// handleAppCall forwards a call of /ws to the application, as app.<name>.
func (fs *fastapiSession) handleAppCall(ctx context.Context, req fastapiws.Request) {
	sess, srv := fs.sess, fs.sess.srv
	if srv.app == nil {
		fs.reply(req, json.RawMessage("null"), "", &fastapiws.Error{Code: rpc.CodeMethodNotFound,
			Message: fmt.Sprintf("method %q not found: this sidecar forwards no application methods (--app-rpc-url is not set)", req.Method)})
		return
	}
	claims := sess.claims.Load()
	if !claims.CanCall("app." + req.Method) {
		fs.reply(req, json.RawMessage("null"), "", &fastapiws.Error{Code: rpc.CodeForbidden,
			Message: fmt.Sprintf("calling %q is not allowed by your token (it needs app.%s)", req.Method, req.Method)})
		return
	}

	// Their servers respond to requests without call_id too, so every call
	// is forwarded as a request.
	call := appcall.Call{
		ClientID: sess.id,
		Subject:  claims.Subject,
		Method:   req.Method,
		Params:   req.Arguments,
		ID:       json.RawMessage(strconv.FormatUint(srv.appCalls.Add(1), 10)),
	}
	start := time.Now()
	result, rerr := srv.app.Forward(ctx, call)
	if rerr != nil {
		srv.metrics.observeRPC(directionClientToApp, rpcOutcome(rerr), start)
		rerr = sess.appError(rerr)
		fs.reply(req, json.RawMessage("null"), "", &fastapiws.Error{Code: rerr.Code, Message: rerr.Message})
		return
	}
	srv.metrics.observeRPC(directionClientToApp, outcomeOK, start)
	fs.reply(req, result, "", nil)
}

// reply sends the response to req. A request without call_id gets one
// with an empty call_id, because strict clients require a string.
func (fs *fastapiSession) reply(req fastapiws.Request, result json.RawMessage, resultType string, e *fastapiws.Error) {
	fs.sess.client.Send(fastapiws.EncodeResponse(req.CallID, result, resultType, e))
}

type topicsArgs struct {
	Topics json.RawMessage `json:"topics"`
}

// topicList reads the topics argument of subscribe and unsubscribe.
func topicList(args json.RawMessage) ([]string, *fastapiws.Error) {
	var a topicsArgs
	if len(args) > 0 {
		if err := json.Unmarshal(args, &a); err != nil {
			return nil, &fastapiws.Error{Code: rpc.CodeInvalidParams, Message: "arguments must be an object"}
		}
	}
	return parseTopics(a.Topics)
}

// parseTopics reads a topics value: a list of strings, or one string
// (their server accepts the bare all-topics string). Absent or null is an
// empty list.
func parseTopics(raw json.RawMessage) ([]string, *fastapiws.Error) {
	if len(raw) == 0 || bytes.Equal(raw, []byte("null")) {
		return nil, nil
	}
	var one string
	if json.Unmarshal(raw, &one) == nil {
		return []string{one}, nil
	}
	var list []string
	if err := json.Unmarshal(raw, &list); err != nil {
		return nil, &fastapiws.Error{Code: rpc.CodeInvalidParams, Message: `"topics" must be a list of strings`}
	}
	return list, nil
}

// subscribe adds one subscription per topic. A topic subscribed already is
// kept once. It returns false, with the reasons, when any topic is invalid
// or not allowed; the others are subscribed.
func (fs *fastapiSession) subscribe(args json.RawMessage) (bool, *fastapiws.Error) {
	topics, e := topicList(args)
	if e != nil {
		return false, e
	}
	sess := fs.sess
	claims := sess.claims.Load()

	// Every topic is checked before any is subscribed, so a false result
	// leaves the subscriptions as they were.
	patterns := make([]topic.Pattern, len(topics))
	for i, t := range topics {
		pattern, err := fastapiPattern(t)
		if err != nil {
			sess.logger().Info("fastapi subscribe rejected a topic", "topic", t, "err", err)
			return false, &fastapiws.Error{Code: rpc.CodeInvalidParams, Message: err.Error()}
		}
		if !claims.CanSubscribe(pattern) {
			return false, &fastapiws.Error{Code: rpc.CodeForbidden, Message: fmt.Sprintf("subscribing to %q is not allowed by your token", t)}
		}
		patterns[i] = pattern
	}

	var problems []string
	for i, t := range topics {
		pattern := patterns[i]
		fs.mu.Lock()
		_, dup := fs.subs[t]
		full := len(fs.subs) >= sess.srv.cfg.MaxSubscriptions
		fs.mu.Unlock()
		if dup {
			continue
		}
		if full {
			problems = append(problems, fmt.Sprintf("this connection has %d subscriptions, the limit: unsubscribe from some first", sess.srv.cfg.MaxSubscriptions))
			break
		}

		sub, _ := sess.client.Subscribe([]topic.Pattern{pattern}, 0)
		fs.mu.Lock()
		fs.subs[t] = sub
		fs.topicOf[sub.ID()] = t
		fs.mu.Unlock()
		sub.Start(nil)
	}
	if len(problems) > 0 {
		return false, &fastapiws.Error{Code: rpc.CodeRateLimited, Message: strings.Join(problems, "; ")}
	}
	return true, nil
}

// fastapiPattern maps a topic of their protocol to the sidecar's: the
// all-topics string to ">", any other string to itself as a literal topic.
func fastapiPattern(t string) (topic.Pattern, error) {
	if t == fastapiws.AllTopics {
		return topic.MustParse(">"), nil
	}
	if err := validLiteralTopic(t); err != nil {
		return topic.Pattern{}, err
	}
	return topic.Parse(t)
}

func (fs *fastapiSession) unsubscribe(args json.RawMessage) *fastapiws.Error {
	topics, e := topicList(args)
	if e != nil {
		return e
	}
	for _, t := range topics {
		fs.mu.Lock()
		sub, ok := fs.subs[t]
		delete(fs.subs, t)
		if ok {
			delete(fs.topicOf, sub.ID())
		}
		fs.mu.Unlock()
		if ok {
			fs.sess.client.Unsubscribe(sub.ID())
		}
	}
	return nil
}

type publishArgs struct {
	Topics     json.RawMessage `json:"topics"`
	Data       json.RawMessage `json:"data"`
	Sync       *bool           `json:"sync"`
	NotifierID *string         `json:"notifier_id"`
}

// maxFastAPIData leaves room for the notify envelope around the data within
// the 1 MiB their client accepts.
const maxFastAPIData = fastapiws.MaxClientMessage - 4096

// publish publishes data as one durable event per topic, in one
// transaction, and answers once it has committed, whatever sync says.
// Without a notifier_id, or with this connection's own id, the publisher
// does not receive its own events, as with their servers.
func (fs *fastapiSession) publish(ctx context.Context, args json.RawMessage) (bool, *fastapiws.Error) {
	sess, srv := fs.sess, fs.sess.srv
	var a publishArgs
	if len(args) > 0 {
		if err := json.Unmarshal(args, &a); err != nil {
			return false, &fastapiws.Error{Code: rpc.CodeInvalidParams, Message: "arguments must be an object with topics, data, sync and notifier_id"}
		}
	}
	topics, e := parseTopics(a.Topics)
	if e != nil {
		return false, e
	}
	if len(topics) == 0 {
		return false, &fastapiws.Error{Code: rpc.CodeInvalidParams, Message: `"topics" is empty: give at least one topic`}
	}
	data := orNull(a.Data)
	if len(data) > maxFastAPIData || len(data) > srv.cfg.MaxEventBytes {
		return false, &fastapiws.Error{Code: rpc.CodeInvalidParams, Message: fmt.Sprintf(
			"data is %d bytes, over the limit of %d: their clients refuse messages over 1 MiB, and --max-event-bytes is %d", len(data), maxFastAPIData, srv.cfg.MaxEventBytes)}
	}

	claims := sess.claims.Load()
	pubs := make([]store.Publication, 0, len(topics))
	for _, t := range topics {
		if t == fastapiws.AllTopics {
			return false, &fastapiws.Error{Code: rpc.CodeInvalidParams, Message: "the all-topics string can be subscribed to, not published to: name the topic"}
		}
		if err := validLiteralTopic(t); err != nil {
			sess.logger().Info("fastapi publish rejected a topic", "topic", t, "err", err)
			return false, &fastapiws.Error{Code: rpc.CodeInvalidParams, Message: err.Error()}
		}
		if !claims.CanPublish(t) {
			return false, &fastapiws.Error{Code: rpc.CodeForbidden, Message: fmt.Sprintf("publishing to %q is not allowed by your token", t)}
		}
		pubs = append(pubs, store.Publication{Topic: t, Data: data, Durable: true})
	}
	self := a.NotifierID == nil || *a.NotifierID == sess.id

	fs.beginPublish()
	ids, err := srv.store.PublishAll(ctx, pubs)
	fs.endPublish(ids, self && err == nil)
	srv.metrics.countPublish(transportWebsocket, len(pubs), err == nil)
	if err != nil {
		rerr := sess.publishError(err)
		return false, &fastapiws.Error{Code: rerr.Code, Message: rerr.Message}
	}
	return true, nil
}

func (fs *fastapiSession) beginPublish() {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	fs.publishing++
}

// endPublish records ids as the connection's own when own is true, and
// wakes the writer once no publish is in flight.
func (fs *fastapiSession) endPublish(ids []int64, own bool) {
	fs.mu.Lock()
	defer fs.mu.Unlock()

	if own {
		for _, id := range ids {
			fs.own[id] = true
		}
		// An id is checked once per matching subscription, so it stays
		// until the set is large. The oldest half then goes, long after
		// their events were delivered.
		if len(fs.own) > maxOwnIDs {
			pruneOldest(fs.own, len(fs.own)/2)
		}
	}
	fs.publishing--
	if fs.publishing == 0 {
		close(fs.published)
		fs.published = make(chan struct{})
	}
}

// isOwn reports whether the durable event id was published by this
// connection for itself, waiting first until no publish of the connection
// is in flight, so that an event cannot overtake its publisher's record.
func (fs *fastapiSession) isOwn(id int64, closed <-chan struct{}) bool {
	for {
		fs.mu.Lock()
		if fs.publishing == 0 {
			own := fs.own[id]
			fs.mu.Unlock()
			return own
		}
		wait := fs.published
		fs.mu.Unlock()
		select {
		case <-wait:
		case <-closed:
			return false
		}
	}
}

// validLiteralTopic checks t as one concrete topic, with a message for
// wildcards that fits subscriptions as well as publishes.
func validLiteralTopic(t string) error {
	err := topic.Validate(t)
	if errors.Is(err, topic.ErrWildcard) {
		return fmt.Errorf("topic %q has a * or > segment, which the sidecar reads as a wildcard: these topics are literal, so use other characters", t)
	}
	return err
}

// maxOwnIDs bounds the ids of events that a connection published for
// itself and still filters out.
const maxOwnIDs = 4096

// pruneOldest removes the n smallest ids from set.
func pruneOldest(set map[int64]bool, n int) {
	ids := make([]int64, 0, len(set))
	for id := range set {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids[:n] {
		delete(set, id)
	}
}

func orNull(raw json.RawMessage) json.RawMessage {
	if len(raw) == 0 {
		return json.RawMessage("null")
	}
	return raw
}

func jsonBool(b bool) json.RawMessage {
	if b {
		return json.RawMessage("true")
	}
	return json.RawMessage("false")
}

func jsonString(s string) json.RawMessage {
	b, _ := json.Marshal(s)
	return b
}

// fastapiSink writes the hub's messages to a fastapi client: event
// notifications become notify requests, the heartbeat is left out, and
// everything else is already in the fastapi format.
type fastapiSink struct {
	conn *websocket.Conn
	fs   *fastapiSession

	closeOnce sync.Once
	closed    chan struct{} // closed by Close or CloseNow
	tooLarge  atomic.Int64
}

var heartbeatFramePrefix = []byte(`{"jsonrpc":"2.0","method":"heartbeat"`)

func (s *fastapiSink) Write(_ context.Context, msg []byte) error {
	switch {
	case bytes.HasPrefix(msg, heartbeatFramePrefix):
		return nil
	case hub.IsEventFrame(msg):
		frame, ok := s.notifyFrame(msg)
		if !ok {
			return nil
		}
		msg = frame
	}

	typ := websocket.MessageText
	if s.fs.binary.Load() {
		typ = websocket.MessageBinary
	}
	return s.conn.Write(context.Background(), typ, msg)
}

// eventParams is the params member of the hub's event notification.
type eventParams struct {
	Params struct {
		Topic        string          `json:"topic"`
		Data         json.RawMessage `json:"data"`
		ID           int64           `json:"id"`
		Subscription string          `json:"subscription"`
	} `json:"params"`
}

// notifyFrame turns an event notification into the notify request of the
// pub/sub protocol. It returns false for an event that is not sent: one
// the connection published for itself, one of a subscription just
// removed, or one too large for their client, which is counted and logged.
func (s *fastapiSink) notifyFrame(msg []byte) ([]byte, bool) {
	fs := s.fs
	var ev eventParams
	if err := jsonv2.Unmarshal(msg, &ev, rpc.DecodeOptions); err != nil {
		fs.sess.logger().Error("dropped an event that could not be decoded for a fastapi client", "err", err)
		return nil, false
	}
	p := ev.Params
	if p.ID > 0 && fs.isOwn(p.ID, s.closed) {
		return nil, false
	}

	fs.mu.Lock()
	_, subscribed := fs.topicOf[p.Subscription]
	fs.mu.Unlock()
	if !subscribed {
		return nil, false
	}

	args := fastapiws.EncodeNotification(fs.sess.id+"-"+p.Subscription, fs.sess.id, p.Topic, p.Data)
	frame := fastapiws.EncodeRequest("notify", args, notifyCallPrefix+strconv.FormatUint(fs.notifySeq.Add(1), 10))
	if len(frame) > fastapiws.MaxClientMessage {
		n := s.tooLarge.Add(1)
		fs.sess.srv.metrics.refused.WithLabelValues("too_large_for_client").Inc()
		fs.sess.logger().Warn("an event is too large for a fastapi client and was not sent", "topic", p.Topic, "bytes", len(frame), "limit", fastapiws.MaxClientMessage, "total", n)
		return nil, false
	}
	return frame, true
}

func (s *fastapiSink) Close(code int, reason string) error {
	s.closeSignal()
	return s.conn.Close(websocket.StatusCode(code), reason)
}

func (s *fastapiSink) CloseNow() error {
	s.closeSignal()
	return s.conn.CloseNow()
}

func (s *fastapiSink) closeSignal() {
	s.closeOnce.Do(func() { close(s.closed) })
}
