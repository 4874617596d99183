package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/pgsidecar/sidecar/rpc"
	"github.com/pgsidecar/sidecar/store"
)

// RoutingChannel carries the application's calls to clients, and their
// responses, between sidecar instances.
const RoutingChannel = "realtime_rpc"

// instanceIDLen is the length of the instance prefix of every client id:
// the first characters of a client id name the instance that holds it.
const instanceIDLen = 11

// maxNotifyPayload is the largest routed message that fits in one NOTIFY
// with its authenticator.
const maxNotifyPayload = store.MaxSignedPayload

// routed is one message on the routing channel. Kind is q (a call of one
// client), sq (a call of every connection of a subject, to all instances),
// a and sa (their responses), or ref (a message too large for NOTIFY, stored
// in realtime.rpc_messages under Ref).
type routed struct {
	Kind      string          `json:"k"`
	To        string          `json:"to,omitempty"`
	From      string          `json:"from,omitempty"`
	RequestID string          `json:"rid,omitempty"`
	ClientID  string          `json:"c,omitempty"`
	Subject   string          `json:"s,omitempty"`
	Method    string          `json:"m,omitempty"`
	Params    json.RawMessage `json:"p,omitempty"`
	TimeoutMS int64           `json:"t,omitempty"`
	Result    json.RawMessage `json:"r,omitempty"`
	Error     *rpc.Error      `json:"e,omitempty"`
	NotFound  bool            `json:"nf,omitempty"`
	Failure   string          `json:"f,omitempty"`
	Results   []subjectResult `json:"rs,omitempty"`
	Ref       int64           `json:"ref,omitempty"`
}

// router sends calls to clients of other instances through Postgres and
// waits for their responses. It is safe for concurrent use.
type router struct {
	s       *Server
	mu      sync.Mutex
	next    uint64
	waiting map[string]chan routed
}

// await registers a request id whose responses arrive on the returned
// channel, which holds up to n of them.
func (r *router) await(n int) (string, chan routed) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.waiting == nil {
		r.waiting = map[string]chan routed{}
	}
	r.next++
	id := strconv.FormatUint(r.next, 10)
	ch := make(chan routed, max(n, 1))
	r.waiting[id] = ch
	return id, ch
}

func (r *router) done(id string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.waiting, id)
}

// send publishes a routed message, through the table when it is too large
// for one NOTIFY.
func (r *router) send(ctx context.Context, msg routed) error {
	body, err := json.Marshal(msg)
	if err != nil {
		return fmt.Errorf("encode routed %s: %w", msg.Kind, err)
	}
	if len(body) > maxNotifyPayload {
		var ref int64
		err := r.s.pool.QueryRow(ctx, "INSERT INTO realtime.rpc_messages (body) VALUES ($1) RETURNING id", string(body)).Scan(&ref)
		if err != nil {
			return fmt.Errorf("store routed %s: %w", msg.Kind, err)
		}
		body, _ = json.Marshal(routed{Kind: "ref", Ref: ref})
	}
	key := r.s.notifyKey.Load()
	if key == nil {
		return fmt.Errorf("send routed %s: the database is not prepared yet", msg.Kind)
	}
	signed := key.Sign(RoutingChannel, string(body))
	if _, err := r.s.pool.Exec(ctx, "SELECT pg_notify($1, $2)", RoutingChannel, signed); err != nil {
		return fmt.Errorf("send routed %s: %w", msg.Kind, err)
	}
	return nil
}

// callRemote calls a client held by another instance.
func (r *router) callRemote(ctx context.Context, instance, clientID, method string, params json.RawMessage, timeout time.Duration) (json.RawMessage, *rpc.Error, error) {
	var running bool
	err := r.s.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM realtime.instances WHERE id = $1 AND seen_at > now() - interval '30 seconds')`, instance).Scan(&running)
	if err != nil {
		return nil, nil, fmt.Errorf("look up sidecar instance: %w", err)
	}
	if !running {
		return nil, nil, errClientGone
	}

	rid, answers := r.await(1)
	defer r.done(rid)

	err = r.send(ctx, routed{Kind: "q", To: instance, From: r.s.instance, RequestID: rid,
		ClientID: clientID, Method: method, Params: params, TimeoutMS: timeout.Milliseconds()})
	if err != nil {
		return nil, nil, err
	}

	// The holder applies the timeout to the client; this one waits a
	// little longer for the response to travel back.
	timer := time.NewTimer(timeout + 2*time.Second)
	defer timer.Stop()
	select {
	case a := <-answers:
		switch {
		case a.NotFound:
			return nil, nil, errClientGone
		case a.Failure != "":
			return nil, nil, fmt.Errorf("%w: %s", errClientTimeout, a.Failure)
		case a.Error != nil:
			return nil, a.Error, nil
		}
		return a.Result, nil, nil
	case <-timer.C:
		return nil, nil, fmt.Errorf("%w: no response from the instance that holds it", errClientTimeout)
	case <-ctx.Done():
		return nil, nil, ctx.Err()
	}
}

// callSubjectRemote sends a call of subject's connections to every other
// running instance and gathers the results each of them returns.
func (r *router) callSubjectRemote(ctx context.Context, subject, method string, params json.RawMessage, timeout time.Duration) ([]subjectResult, error) {
	var others int
	err := r.s.pool.QueryRow(ctx, `SELECT count(*) FROM realtime.instances WHERE id <> $1 AND seen_at > now() - interval '30 seconds'`, r.s.instance).Scan(&others)
	if err != nil {
		return nil, fmt.Errorf("count sidecar instances: %w", err)
	}
	if others == 0 {
		return nil, nil
	}

	rid, answers := r.await(others)
	defer r.done(rid)
	err = r.send(ctx, routed{Kind: "sq", From: r.s.instance, RequestID: rid, Subject: subject,
		Method: method, Params: params, TimeoutMS: timeout.Milliseconds()})
	if err != nil {
		return nil, err
	}

	var results []subjectResult
	timer := time.NewTimer(timeout + 2*time.Second)
	defer timer.Stop()
	for range others {
		select {
		case a := <-answers:
			results = append(results, a.Results...)
		case <-timer.C:
			return results, nil
		case <-ctx.Done():
			return results, ctx.Err()
		}
	}
	return results, nil
}

// handle processes one notification of the routing channel. It returns at
// once: calls of local clients run on goroutines of their own.
func (r *router) handle(ctx context.Context, payload string) {
	var msg routed
	if err := json.Unmarshal([]byte(payload), &msg); err != nil {
		r.logger().Warn("undecodable message on the routing channel, ignored", "err", err)
		return
	}
	if msg.Kind == "ref" {
		go r.handleRef(ctx, msg.Ref)
		return
	}
	r.dispatch(ctx, msg)
}

func (r *router) handleRef(ctx context.Context, ref int64) {
	var body string
	err := r.s.pool.QueryRow(ctx, "SELECT body FROM realtime.rpc_messages WHERE id = $1", ref).Scan(&body)
	if err != nil {
		r.logger().Warn("reading a routed message failed", "ref", ref, "err", err)
		return
	}
	var msg routed
	if err := json.Unmarshal([]byte(body), &msg); err != nil {
		r.logger().Warn("undecodable routed message, ignored", "ref", ref, "err", err)
		return
	}
	r.dispatch(ctx, msg)
}

func (r *router) dispatch(ctx context.Context, msg routed) {
	me := r.s.instance
	switch {
	case msg.Kind == "q" && msg.To == me:
		go r.answerCall(ctx, msg)
	case msg.Kind == "sq" && msg.From != me:
		go r.answerSubject(ctx, msg)
	case (msg.Kind == "a" || msg.Kind == "sa") && msg.To == me:
		r.mu.Lock()
		ch := r.waiting[msg.RequestID]
		r.mu.Unlock()
		if ch != nil {
			select {
			case ch <- msg:
			default:
			}
		}
	}
}

func (r *router) answerCall(ctx context.Context, q routed) {
	answer := routed{Kind: "a", To: q.From, RequestID: q.RequestID}
	sess := r.s.sessions.get(q.ClientID)
	if sess == nil {
		answer.NotFound = true
	} else {
		result, rerr, err := sess.callClient(ctx, q.Method, q.Params, time.Duration(q.TimeoutMS)*time.Millisecond)
		switch {
		case errors.Is(err, errClientGone):
			answer.NotFound = true
		case err != nil:
			answer.Failure = err.Error()
		case rerr != nil:
			answer.Error = rerr
		default:
			answer.Result = nullIfEmpty(result)
		}
	}
	if err := r.send(ctx, answer); err != nil && ctx.Err() == nil {
		r.logger().Warn("sending the response to a routed call failed", "client_id", q.ClientID, "err", err)
	}
}

func (r *router) answerSubject(ctx context.Context, q routed) {
	timeout := time.Duration(q.TimeoutMS) * time.Millisecond
	targets := r.s.sessions.ofSubject(q.Subject)
	results := make([]subjectResult, len(targets))
	var wg sync.WaitGroup
	for i, sess := range targets {
		wg.Go(func() { results[i] = callOne(ctx, sess, q.Method, q.Params, timeout) })
	}
	wg.Wait()

	answer := routed{Kind: "sa", To: q.From, From: r.s.instance, RequestID: q.RequestID, Results: results}
	if err := r.send(ctx, answer); err != nil && ctx.Err() == nil {
		r.logger().Warn("sending the response to a routed subject call failed", "err", err)
	}
}

// heartbeat records this instance in realtime.instances every 10 s while
// ctx lasts, and removes it at the end, so subject calls know whom to wait
// for. It also deletes routed messages older than five minutes.
func (r *router) heartbeat(ctx context.Context) {
	tick := time.NewTicker(10 * time.Second)
	defer tick.Stop()
	for {
		_, err := r.s.pool.Exec(ctx, `
			INSERT INTO realtime.instances (id) VALUES ($1)
			ON CONFLICT (id) DO UPDATE SET seen_at = now()`, r.s.instance)
		if err != nil && ctx.Err() == nil {
			r.logger().Warn("recording this instance failed", "err", err)
		}
		_, _ = r.s.pool.Exec(ctx, `DELETE FROM realtime.rpc_messages WHERE created_at < now() - interval '5 minutes'`)
		_, _ = r.s.pool.Exec(ctx, `DELETE FROM realtime.instances WHERE seen_at < now() - interval '1 hour'`)
		r.s.sweepPresence(ctx)

		select {
		case <-ctx.Done():
			cleanup, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
			r.s.leaveInstance(cleanup)
			_, _ = r.s.pool.Exec(cleanup, "DELETE FROM realtime.instances WHERE id = $1", r.s.instance)
			cancel()
			return
		case <-tick.C:
		}
	}
}

// logger returns the server's logger for lines about routing.
func (r *router) logger() *slog.Logger {
	return r.s.log.With("component", "routing")
}
