package server

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/pgsidecar/sidecar/appcall"
	"github.com/pgsidecar/sidecar/auth"
	"github.com/pgsidecar/sidecar/hub"
	"github.com/pgsidecar/sidecar/rpc"
	"github.com/pgsidecar/sidecar/store"
	"github.com/pgsidecar/sidecar/topic"
)

// maxPatterns bounds the patterns of one subscribe request.
const maxPatterns = 100

// call is a decoded request whose checks have passed; run does its work.
type call struct {
	run     func(ctx context.Context) (any, *rpc.Error)
	inline  bool // cheap: runs on the read loop
	publish bool // keeps its order among the connection's publishes
}

// handle processes one text message through the connection's rpc.Peer:
// responses complete the application's calls, and requests and
// notifications go to prepareMessage. Requests are checked in the order
// the protocol defines: parse, request shape, method, params,
// authentication, authorization, rate. The first failure is the response.
func (sess *session) handle(ctx context.Context, msg []byte) {
	sess.peer.Receive(ctx, msg)
}

// prepareMessage is the session's rpc.Preparer. A publish waits for the
// connection's previous publish, so publishes commit in arrival order.
func (sess *session) prepareMessage(_ context.Context, m rpc.Message) (rpc.Prepared, *rpc.Error) {
	c, rerr := sess.prepare(m)
	if rerr != nil {
		return rpc.Prepared{}, rerr
	}
	if ok, abusive := sess.guard.allow(); !ok {
		sess.srv.metrics.refused.WithLabelValues("rate_limited").Inc()
		if abusive {
			sess.logger().Warn("closing a client that keeps sending over its message rate", "rate", sess.srv.cfg.MessageRate)
			sess.client.Close(int(closePolicy), "message rate exceeded")
		}
		return rpc.Prepared{}, rpc.Errorf(rpc.CodeRateLimited,
			"more than %g requests per second on this connection: slow down", sess.srv.cfg.MessageRate)
	}

	run := func(ctx context.Context) (any, error) {
		result, rerr := c.run(ctx)
		if rerr != nil {
			return nil, rerr
		}
		return result, nil
	}
	if !c.publish {
		return rpc.Prepared{Run: run, Inline: c.inline}, nil
	}

	prev, done := sess.lastPublish, make(chan struct{})
	sess.lastPublish = done
	return rpc.Prepared{
		Run: func(ctx context.Context) (any, error) {
			<-prev
			defer close(done)
			return run(ctx)
		},
		// A publish that does not run must not hold up the next one.
		Dropped: func() {
			go func() {
				<-prev
				close(done)
			}()
		},
	}, nil
}

// prepare runs every check that needs no database and returns the work
// left to do.
func (sess *session) prepare(m rpc.Message) (call, *rpc.Error) {
	switch m.Method {
	case "ping":
		if rerr := rpc.CheckParams(m.Params); rerr != nil {
			return call{}, rerr
		}
		return call{inline: true, run: func(context.Context) (any, *rpc.Error) { return "pong", nil }}, nil
	case "subscribe":
		return sess.prepareSubscribe(m.Params)
	case "unsubscribe":
		return sess.prepareUnsubscribe(m.Params)
	case "publish":
		return sess.preparePublish(m.Params)
	case "presence.join", "presence.leave", "presence.list", "presence.stats":
		return sess.preparePresence(m)
	case "history":
		return sess.prepareHistory(m.Params)
	case "auth":
		return sess.prepareAuth(m.Params)
	}
	if strings.HasPrefix(m.Method, "app.") {
		return sess.prepareAppCall(m)
	}
	return call{}, rpc.MethodNotFound(m.Method)
}

// prepareAppCall checks a call of an application method, which the sidecar
// forwards to --app-rpc-url with the app. prefix removed.
func (sess *session) prepareAppCall(m rpc.Message) (call, *rpc.Error) {
	srv := sess.srv
	if srv.app == nil {
		return call{}, rpc.Errorf(rpc.CodeMethodNotFound, "method %q not found: this sidecar forwards no application methods (--app-rpc-url is not set)", m.Method)
	}
	if rerr := rpc.CheckParams(m.Params); rerr != nil {
		return call{}, rerr
	}
	claims, rerr := sess.requireClaims()
	if rerr != nil {
		return call{}, rerr
	}
	if !claims.CanCall(m.Method) {
		return call{}, rpc.Errorf(rpc.CodeForbidden, "calling %q is not allowed by your token", m.Method)
	}

	forward := appcall.Call{
		ClientID: sess.id,
		Subject:  claims.Subject,
		Method:   strings.TrimPrefix(m.Method, "app."),
		Params:   m.Params,
	}
	if m.ID != nil {
		forward.ID = json.RawMessage(strconv.FormatUint(srv.appCalls.Add(1), 10))
	}
	return call{run: func(ctx context.Context) (any, *rpc.Error) {
		start := time.Now()
		result, rerr := srv.app.Forward(ctx, forward)
		if rerr != nil {
			srv.metrics.observeRPC(directionClientToApp, rpcOutcome(rerr), start)
			return nil, sess.appError(rerr)
		}
		srv.metrics.observeRPC(directionClientToApp, outcomeOK, start)
		return result, nil
	}}, nil
}

// appError passes the application's own errors through unchanged. The
// sidecar's -32005 messages are logged whole but reach the client without
// the application's address, which browsers need not learn.
func (sess *session) appError(rerr *rpc.Error) *rpc.Error {
	if rerr.Code != rpc.CodeAppCallFailed {
		return rerr
	}
	// The forwarder logs the failure, rate-limited, with the call.
	sess.logger().Debug("application call failed", "err", rerr.Message)
	out := *rerr
	out.Message = strings.ReplaceAll(out.Message, sess.srv.cfg.AppRPCURL, "the application")
	return &out
}

func (sess *session) requireClaims() (*auth.Claims, *rpc.Error) {
	c := sess.claims.Load()
	if c == nil {
		return nil, rpc.Errorf(rpc.CodeNotAuthenticated, "not authenticated: send an auth request with a token first")
	}
	return c, nil
}

type subscribeParams struct {
	Topics []string `json:"topics"`
	Since  *int64   `json:"since"`
	Epoch  *string  `json:"epoch"`
}

func (sess *session) prepareSubscribe(raw json.RawMessage) (call, *rpc.Error) {
	var p subscribeParams
	if rerr := rpc.DecodeParams(raw, &p); rerr != nil {
		return call{}, rerr
	}
	if len(p.Topics) == 0 {
		return call{}, rpc.InvalidParams(`"topics" must list at least one pattern`)
	}
	if len(p.Topics) > maxPatterns {
		return call{}, rpc.InvalidParams(`"topics" lists %d patterns, over the limit of %d: subscribe in several requests`, len(p.Topics), maxPatterns)
	}
	if p.Since != nil && *p.Since < 0 {
		return call{}, rpc.InvalidParams(`"since" is %d: it must be an event id, 0 or above`, *p.Since)
	}

	patterns := make([]topic.Pattern, len(p.Topics))
	for i, s := range p.Topics {
		pat, err := topic.Parse(s)
		if err != nil {
			return call{}, rpc.InvalidParams("%v", err)
		}
		patterns[i] = pat
	}

	claims, rerr := sess.requireClaims()
	if rerr != nil {
		return call{}, rerr
	}
	for _, pat := range patterns {
		if !claims.CanSubscribe(pat) {
			return call{}, rpc.Errorf(rpc.CodeForbidden, "subscribing to %q is not allowed by your token", pat.String())
		}
	}
	if n, limit := sess.subscriptionCount(), sess.srv.cfg.MaxSubscriptions; n >= limit {
		return call{}, rpc.Errorf(rpc.CodeRateLimited, "this connection has %d subscriptions, the limit: unsubscribe from some first", n)
	}

	return call{run: func(ctx context.Context) (any, *rpc.Error) {
		return sess.subscribe(ctx, p, patterns)
	}}, nil
}

// subscribe adds the subscription, replays what the client missed when it
// gave since, and only then lets live events through, so that the client
// sees the result, the replay and the live events in that order with no
// gap and no duplicate.
func (sess *session) subscribe(ctx context.Context, p subscribeParams, patterns []topic.Pattern) (any, *rpc.Error) {
	srv := sess.srv
	epoch := srv.epoch()

	var after int64
	if p.Since != nil {
		after = *p.Since
	}
	sub, watermark := sess.client.Subscribe(patterns, after)

	var replay []hub.Event
	if p.Since != nil {
		events, rerr := sess.replay(ctx, patterns, *p.Since, p.Epoch, epoch, watermark)
		if rerr != nil {
			sess.client.Unsubscribe(sub.ID())
			return nil, rerr
		}
		replay = events
	}

	// The checks in prepareSubscribe ran before the replay. An auth
	// request or other subscribes may have finished since, so the
	// subscription is admitted only if the claims and the limit still
	// allow it now.
	if rerr := sess.admitSubscription(sub.ID(), patterns); rerr != nil {
		sess.client.Unsubscribe(sub.ID())
		return nil, rerr
	}
	return subscribeResult{sub: sub, replay: replay, result: map[string]any{
		"subscription": sub.ID(),
		"topics":       p.Topics,
		"epoch":        epoch,
		"head":         watermark,
	}}, nil
}

// subscribeResult makes the peer send the result and then start the
// subscription, in that order, so the result comes before every event of
// the subscription.
type subscribeResult struct {
	sub    *hub.Subscription
	replay []hub.Event
	result map[string]any
}

func (r subscribeResult) ReplyValue() any { return r.result }
func (r subscribeResult) AfterReply()     { r.sub.Start(r.replay) }

// replay checks a resume point and reads the events after it.
func (sess *session) replay(ctx context.Context, patterns []topic.Pattern, since int64, clientEpoch *string, epoch string, watermark int64) ([]hub.Event, *rpc.Error) {
	if clientEpoch != nil && *clientEpoch != epoch {
		return nil, historyExpired("epoch %q is not this database's epoch %q: reload your state, then subscribe without since", *clientEpoch, epoch)
	}

	s := sess.srv
	if since > watermark {
		head, err := s.store.Head(ctx)
		if err != nil {
			return nil, sess.internal(err)
		}
		if since > head {
			return nil, historyExpired("since %d is above the newest event id %d: reload your state, then subscribe without since", since, head)
		}
		return nil, nil // the live stream starts after since
	}

	purged, err := s.store.PurgedThrough(ctx)
	if err != nil {
		return nil, sess.internal(err)
	}
	if since < purged {
		return nil, historyExpired("events after id %d may have been deleted (retention keeps ids above %d): reload your state, then subscribe without since", since, purged)
	}

	events, err := s.store.Replay(ctx, patterns, since, watermark, s.cfg.ReplayLimit)
	if errors.Is(err, store.ErrTooMany) {
		return nil, historyExpired("more than %d events were published after id %d, over the replay limit: reload your state, then subscribe without since", s.cfg.ReplayLimit, since)
	}
	if err != nil {
		return nil, sess.internal(err)
	}

	out := make([]hub.Event, len(events))
	for i, ev := range events {
		out[i] = hub.Event{Topic: ev.Topic, Data: ev.Data, ID: ev.ID, TS: ev.TS}
	}
	return out, nil
}

func historyExpired(format string, args ...any) *rpc.Error {
	return rpc.Errorf(rpc.CodeHistoryExpired, "history expired: "+format, args...)
}

// internal logs a failure to reach Postgres and returns the error the
// client gets for it.
func (sess *session) internal(err error) *rpc.Error {
	sess.logger().Error("request failed", "err", err)
	if errors.Is(err, store.ErrUncertain) {
		return rpc.Errorf(rpc.CodeInternal, "internal error: the connection to Postgres failed during the publish, so the event may or may not have been published")
	}
	return rpc.Errorf(rpc.CodeInternal, "internal error: the sidecar could not reach Postgres; try again")
}

func (sess *session) prepareUnsubscribe(raw json.RawMessage) (call, *rpc.Error) {
	var p struct {
		Subscription *string `json:"subscription"`
	}
	if rerr := rpc.DecodeParams(raw, &p); rerr != nil {
		return call{}, rerr
	}
	if p.Subscription == nil {
		return call{}, rpc.InvalidParams(`"subscription" is missing: give the id that subscribe returned`)
	}
	return call{inline: true, run: func(context.Context) (any, *rpc.Error) {
		sess.client.Unsubscribe(*p.Subscription)
		sess.forgetSubscription(*p.Subscription)
		return struct{}{}, nil
	}}, nil
}

type publishParams struct {
	Topic   *string         `json:"topic"`
	Data    json.RawMessage `json:"data"`
	Durable *bool           `json:"durable"`
}

func (sess *session) preparePublish(raw json.RawMessage) (call, *rpc.Error) {
	var p publishParams
	if rerr := rpc.DecodeParams(raw, &p); rerr != nil {
		return call{}, rerr
	}
	if p.Topic == nil {
		return call{}, rpc.InvalidParams(`"topic" is missing`)
	}
	if err := topic.Validate(*p.Topic); err != nil {
		return call{}, rpc.InvalidParams("%v", err)
	}
	if p.Data == nil {
		return call{}, rpc.InvalidParams(`"data" is missing: give any JSON value, null included`)
	}
	if len(p.Data) > sess.srv.cfg.MaxEventBytes*2 {
		return call{}, rpc.InvalidParams("data is %d bytes, over the maximum event size of %d bytes", len(p.Data), sess.srv.cfg.MaxEventBytes)
	}
	durable := p.Durable == nil || *p.Durable

	claims, rerr := sess.requireClaims()
	if rerr != nil {
		return call{}, rerr
	}
	if !claims.CanPublish(*p.Topic) {
		return call{}, rpc.Errorf(rpc.CodeForbidden, "publishing to %q is not allowed by your token", *p.Topic)
	}

	return call{publish: true, run: func(ctx context.Context) (any, *rpc.Error) {
		result, rerr := sess.publishOne(ctx, *p.Topic, p.Data, durable)
		sess.srv.metrics.countPublish(transportWebsocket, 1, rerr == nil)
		return result, rerr
	}}, nil
}

func (sess *session) publishOne(ctx context.Context, t string, data json.RawMessage, durable bool) (any, *rpc.Error) {
	st := sess.srv.store
	if !durable {
		if err := st.Broadcast(ctx, t, data); err != nil {
			return nil, sess.publishError(err)
		}
		return struct{}{}, nil
	}

	id, err := st.Publish(ctx, t, data)
	if err != nil {
		return nil, sess.publishError(err)
	}
	return map[string]int64{"id": id}, nil
}

func (sess *session) publishError(err error) *rpc.Error {
	switch {
	case errors.Is(err, store.ErrTooLarge):
		return rpc.InvalidParams("%s", strings.TrimPrefix(err.Error(), store.ErrTooLarge.Error()+": "))
	case errors.Is(err, store.ErrInvalid):
		return rpc.InvalidParams("%s", strings.TrimPrefix(err.Error(), store.ErrInvalid.Error()+": "))
	case errors.Is(err, store.ErrRejected):
		sess.logger().Error("publish rejected by Postgres", "err", err)
		return rpc.Errorf(rpc.CodeInternal, "internal error: Postgres rejected the publish; the sidecar's log has the details")
	}
	return sess.internal(err)
}

func (sess *session) prepareAuth(raw json.RawMessage) (call, *rpc.Error) {
	var p struct {
		Token *string `json:"token"`
	}
	if rerr := rpc.DecodeParams(raw, &p); rerr != nil {
		return call{}, rerr
	}
	if p.Token == nil || *p.Token == "" {
		return call{}, rpc.InvalidParams(`"token" is missing`)
	}

	return call{inline: true, run: func(context.Context) (any, *rpc.Error) {
		if sess.srv.verifier == nil {
			return nil, rpc.Errorf(rpc.CodeNotAuthenticated, noTokenKeys)
		}
		claims, err := sess.srv.verifier.Verify(*p.Token)
		if err != nil {
			return nil, rpc.Errorf(rpc.CodeNotAuthenticated, "%v", err)
		}
		if old := sess.claims.Load(); old != nil && !old.Anonymous && old.Subject != claims.Subject {
			return nil, rpc.Errorf(rpc.CodeForbidden, "the new token is for subject %q, but this connection belongs to %q: open a new connection", claims.Subject, old.Subject)
		}

		if old := sess.claims.Load(); old == nil || old.Anonymous {
			// The connection is counted under its subject from now on.
			if !sess.srv.conns.addSubject(claims.Subject, sess.srv.cfg.MaxConnectionsPerSubject) {
				return nil, rpc.Errorf(rpc.CodeRateLimited, "subject %q already has the most connections allowed: close one first", claims.Subject)
			}
			sess.lateSubject = claims.Subject
		}
		removed := sess.replaceClaims(claims)
		sess.srv.sessions.setSubject(sess, claims.Subject)
		if sess.authTimer != nil {
			sess.authTimer.Stop()
		}

		result := map[string]any{"sub": claims.Subject, "exp": claims.Expires.Unix()}
		if len(removed) > 0 {
			result["removed"] = removed
		}
		return result, nil
	}}, nil
}

// admitSubscription records the subscription if the connection's current
// claims allow every pattern and the connection is under
// Config.MaxSubscriptions. It holds subsMu, like replaceClaims, so that a
// subscription is either checked against the new claims or pruned by them.
func (sess *session) admitSubscription(id string, patterns []topic.Pattern) *rpc.Error {
	sess.subsMu.Lock()
	defer sess.subsMu.Unlock()

	claims := sess.claims.Load()
	for _, pat := range patterns {
		if !claims.CanSubscribe(pat) {
			return rpc.Errorf(rpc.CodeForbidden, "subscribing to %q is not allowed by your token", pat.String())
		}
	}
	if n, limit := len(sess.subs), sess.srv.cfg.MaxSubscriptions; n >= limit {
		return rpc.Errorf(rpc.CodeRateLimited, "this connection has %d subscriptions, the limit: unsubscribe from some first", n)
	}

	if sess.subs == nil {
		sess.subs = map[string][]topic.Pattern{}
	}
	sess.subs[id] = patterns
	return nil
}

func (sess *session) subscriptionCount() int {
	sess.subsMu.Lock()
	defer sess.subsMu.Unlock()
	return len(sess.subs)
}

func (sess *session) forgetSubscription(id string) {
	sess.subsMu.Lock()
	defer sess.subsMu.Unlock()
	delete(sess.subs, id)
}

// replaceClaims removes the subscriptions that claims no longer allow,
// returns their ids, and then makes claims the connection's rights.
func (sess *session) replaceClaims(claims *auth.Claims) []string {
	sess.subsMu.Lock()
	defer sess.subsMu.Unlock()

	removed := []string{}
	for id, patterns := range sess.subs {
		for _, pat := range patterns {
			if !claims.CanSubscribe(pat) {
				sess.client.Unsubscribe(id)
				delete(sess.subs, id)
				removed = append(removed, id)
				break
			}
		}
	}
	slices.Sort(removed)
	sess.setClaims(claims)
	return removed
}
