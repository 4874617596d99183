package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/pgsidecar/sidecar/rpc"
)

// Errors of calls from the application to a client.
var (
	errClientGone    = errors.New("the client disconnected before it responded")
	errClientTimeout = errors.New("the client did not respond in time")
)

// callClient sends a request to the client and waits for its response
// until timeout. It returns the client's result, or its JSON-RPC error,
// or an error wrapping errClientGone or errClientTimeout.
func (sess *session) callClient(ctx context.Context, method string, params json.RawMessage, timeout time.Duration) (json.RawMessage, *rpc.Error, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	var p any
	if len(params) > 0 {
		p = params
	}
	var result json.RawMessage
	start := time.Now()
	err := sess.peer.Call(ctx, method, p, &result)

	var rerr *rpc.Error
	outcome, gone := outcomeError, false
	defer func() {
		if gone {
			outcome = outcomeNotFound
		}
		sess.srv.metrics.observeRPC(directionAppToClient, outcome, start)
	}()
	switch {
	case err == nil:
		outcome = outcomeOK
		return result, nil, nil
	case errors.As(err, &rerr):
		return nil, rerr, nil
	case errors.Is(err, rpc.ErrClosed), errors.Is(err, errClientGone):
		gone = true
		return nil, nil, errClientGone
	case errors.Is(err, context.DeadlineExceeded):
		outcome = outcomeTimeout
		return nil, nil, fmt.Errorf("%w (%s)", errClientTimeout, timeout)
	}
	return nil, nil, err
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
