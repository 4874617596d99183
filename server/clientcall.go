package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/pgsidecar/sidecar/rpc"
)

// Errors of calls from the application to a client.
var (
	errClientGone    = errors.New("the client disconnected before it answered")
	errClientTimeout = errors.New("the client did not answer in time")
)

// clientCalls tracks the requests the sidecar sent to one client and
// waits for their responses. It is safe for concurrent use.
type clientCalls struct {
	mu      sync.Mutex
	next    uint64
	pending map[string]chan rpc.Message
	closed  bool
}

// start registers a new call and returns its id and the channel its
// response arrives on.
func (cc *clientCalls) start() (string, chan rpc.Message, bool) {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if cc.closed {
		return "", nil, false
	}
	if cc.pending == nil {
		cc.pending = map[string]chan rpc.Message{}
	}
	cc.next++
	id := "sidecar-" + strconv.FormatUint(cc.next, 10)
	ch := make(chan rpc.Message, 1)
	cc.pending[id] = ch
	return id, ch, true
}

func (cc *clientCalls) forget(id string) {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	delete(cc.pending, id)
}

// resolve hands a response from the client to its call. A response that
// matches no call, such as one after its timeout, is dropped.
func (cc *clientCalls) resolve(m rpc.Message) bool {
	var id string
	if err := json.Unmarshal(m.ID, &id); err != nil {
		return false
	}
	cc.mu.Lock()
	defer cc.mu.Unlock()
	ch, ok := cc.pending[id]
	if ok {
		delete(cc.pending, id)
		ch <- m
	}
	return ok
}

// close fails every pending call: the connection has ended.
func (cc *clientCalls) close() {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	cc.closed = true
	for id, ch := range cc.pending {
		close(ch)
		delete(cc.pending, id)
	}
}

// callClient sends a request to the client and waits for its response
// until timeout. It returns the client's result, or its JSON-RPC error,
// or errClientGone or errClientTimeout.
func (sess *session) callClient(ctx context.Context, method string, params json.RawMessage, timeout time.Duration) (json.RawMessage, *rpc.Error, error) {
	id, ch, ok := sess.calls.start()
	if !ok {
		return nil, nil, errClientGone
	}
	defer sess.calls.forget(id)

	quoted, _ := json.Marshal(id)
	if !sess.client.Send(rpc.EncodeRequest(quoted, method, params)) {
		return nil, nil, errClientGone
	}

	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case m, ok := <-ch:
		if !ok {
			return nil, nil, errClientGone
		}
		if m.Error != nil {
			return nil, m.Error, nil
		}
		return m.Result, nil, nil
	case <-timer.C:
		return nil, nil, fmt.Errorf("%w (%s)", errClientTimeout, timeout)
	case <-ctx.Done():
		return nil, nil, ctx.Err()
	}
}

// sessions indexes the connected clients of this instance by client id and
// by subject.
type sessions struct {
	mu        sync.RWMutex
	byID      map[string]*session
	bySubject map[string]map[*session]bool
}

func (ss *sessions) add(sess *session) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.byID == nil {
		ss.byID = map[string]*session{}
		ss.bySubject = map[string]map[*session]bool{}
	}
	ss.byID[sess.id] = sess
}

func (ss *sessions) remove(sess *session) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	delete(ss.byID, sess.id)
	for subject, set := range ss.bySubject {
		delete(set, sess)
		if len(set) == 0 {
			delete(ss.bySubject, subject)
		}
	}
}

// setSubject files the session under its subject once it authenticates.
// A connection keeps one subject for its life.
func (ss *sessions) setSubject(sess *session, subject string) {
	if subject == "" {
		return
	}
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.bySubject == nil {
		ss.bySubject = map[string]map[*session]bool{}
	}
	set := ss.bySubject[subject]
	if set == nil {
		set = map[*session]bool{}
		ss.bySubject[subject] = set
	}
	set[sess] = true
}

func (ss *sessions) get(id string) *session {
	ss.mu.RLock()
	defer ss.mu.RUnlock()
	return ss.byID[id]
}

func (ss *sessions) ofSubject(subject string) []*session {
	ss.mu.RLock()
	defer ss.mu.RUnlock()
	out := make([]*session, 0, len(ss.bySubject[subject]))
	for sess := range ss.bySubject[subject] {
		out = append(out, sess)
	}
	return out
}
