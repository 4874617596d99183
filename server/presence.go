package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/pgsidecar/sidecar/rpc"
	"github.com/pgsidecar/sidecar/store"
	"github.com/pgsidecar/sidecar/topic"
)

// Presence and history. A client joins a topic with presence.join; the
// row lives in realtime.presence, so every instance lists the same
// members. Join and leave events are ephemeral events on presence.<topic>.

const (
	// maxPresenceTopic leaves room for "presence." within a topic's 255
	// bytes.
	maxPresenceTopic = topic.MaxLen - len("presence.")

	// maxPresenceInfo bounds a member's public info, so that join events
	// fit in one notification.
	maxPresenceInfo = 2048

	defaultHistoryLimit = 50
	maxHistoryLimit     = 1000
)

// presenceEvent is the data of a join or leave event.
type presenceEvent struct {
	Event    string          `json:"event"` // join or leave
	ClientID string          `json:"client_id"`
	Subject  string          `json:"sub"`
	Info     json.RawMessage `json:"info,omitempty"`
}

// encodePresenceEvent encodes ev with info copied unchanged, since
// encoding/json would escape <, > and & in it and could push the event over
// the notification's size limit.
func encodePresenceEvent(ev presenceEvent) []byte {
	info := ev.Info
	ev.Info = nil
	head, _ := json.Marshal(ev)
	if len(info) == 0 {
		return head
	}
	out := append(head[:len(head)-1:len(head)-1], `,"info":`...)
	out = append(out, info...)
	return append(out, '}')
}

// presenceSeq keeps two identical presence events apart, since Postgres
// folds identical notifications of one transaction.
var presenceSeq atomic.Uint64

// broadcastPresence sends a join or leave event on presence.<t> to every
// instance, signed like the database's own notifications.
func (s *Server) broadcastPresence(ctx context.Context, t string, ev presenceEvent) {
	key := s.notifyKey.Load()
	if key == nil {
		return
	}
	data := encodePresenceEvent(ev)
	topicJSON, _ := json.Marshal("presence." + t)
	payload := `{"k":"b","x":0,"n":` + strconv.FormatUint(presenceSeq.Add(1), 10) +
		`,"u":` + strconv.FormatInt(time.Now().UnixMicro(), 10) +
		`,"t":` + string(topicJSON) + `,"d":` + string(data) + `}`
	if _, err := s.pool.Exec(ctx, "SELECT pg_notify($1, $2)", store.Channel, key.Sign(store.Channel, payload)); err != nil && ctx.Err() == nil {
		s.log.Warn("sending a presence event failed", "component", "presence", "topic", t, "event", ev.Event, "err", err)
	}
}

// broadcastLeaves sends a leave event for each removed row.
func (s *Server) broadcastLeaves(ctx context.Context, removed []store.Presence) {
	for _, p := range removed {
		s.broadcastPresence(ctx, p.Topic, presenceEvent{Event: "leave", ClientID: p.ClientID, Subject: p.Subject})
	}
}

// sweepPresence removes the members of instances that stopped without
// draining, and announces their leaving.
func (s *Server) sweepPresence(ctx context.Context) {
	removed, err := s.store.SweepPresence(ctx)
	if err != nil {
		if ctx.Err() == nil {
			s.log.Warn("sweeping the presence of stopped instances failed", "component", "presence", "err", err)
		}
		return
	}
	if len(removed) > 0 {
		s.log.Info("removed the presence of clients of stopped instances", "component", "presence", "count", len(removed))
	}
	s.broadcastLeaves(ctx, removed)
}

// leaveInstance removes this instance's members at once, when it stops.
func (s *Server) leaveInstance(ctx context.Context) {
	removed, err := s.store.LeaveInstance(ctx, s.instance)
	if err != nil {
		s.log.Warn("removing this instance's presence failed; it expires instead", "component", "presence", "err", err)
		return
	}
	s.broadcastLeaves(ctx, removed)
}

// presenceParams are the params of presence.join, presence.leave,
// presence.list and presence.stats.
type presenceParams struct {
	Topic *string         `json:"topic"`
	Info  json.RawMessage `json:"info"`
}

// checkPresenceTopic checks a presence topic: concrete, short enough for
// presence.<topic>, and allowed by claims.
func checkPresenceTopic(raw *string, claims interface{ CanPresence(string) bool }) (string, *rpc.Error) {
	if raw == nil {
		return "", rpc.InvalidParams(`"topic" is missing`)
	}
	t := *raw
	if err := topic.Validate(t); err != nil {
		if errors.Is(err, topic.ErrWildcard) {
			return "", rpc.InvalidParams("topic %q is a pattern: presence is kept per topic", t)
		}
		return "", rpc.InvalidParams("%v", err)
	}
	if len(t) > maxPresenceTopic {
		return "", rpc.InvalidParams("topic %q is %d bytes: presence topics may have at most %d, so that presence.<topic> fits in 255", t, len(t), maxPresenceTopic)
	}
	if !claims.CanPresence(t) {
		return "", rpc.Errorf(rpc.CodeForbidden, "presence on %q is not allowed by your token", t)
	}
	return t, nil
}

// preparePresence checks a presence request and returns its work.
func (sess *session) preparePresence(m rpc.Message) (call, *rpc.Error) {
	var p presenceParams
	if rerr := rpc.DecodeParams(m.Params, &p); rerr != nil {
		return call{}, rerr
	}
	if m.Method == "presence.join" && len(p.Info) > maxPresenceInfo {
		return call{}, rpc.InvalidParams(`"info" is %d bytes, over the limit of %d: keep it to a few public fields`, len(p.Info), maxPresenceInfo)
	}
	claims, rerr := sess.requireClaims()
	if rerr != nil {
		return call{}, rerr
	}
	t, rerr := checkPresenceTopic(p.Topic, claims)
	if rerr != nil {
		return call{}, rerr
	}

	srv := sess.srv
	switch m.Method {
	case "presence.join":
		info := p.Info
		if string(info) == "null" {
			info = nil
		}
		return call{run: func(ctx context.Context) (any, *rpc.Error) {
			if err := srv.store.Join(ctx, t, sess.id, srv.instance, claims.Subject, info); err != nil {
				return nil, sess.internal(err)
			}
			sess.presence.add(t)
			srv.broadcastPresence(ctx, t, presenceEvent{Event: "join", ClientID: sess.id, Subject: claims.Subject, Info: info})
			return map[string]any{"topic": t}, nil
		}}, nil
	case "presence.leave":
		return call{run: func(ctx context.Context) (any, *rpc.Error) {
			left, err := srv.store.Leave(ctx, t, sess.id)
			if err != nil {
				return nil, sess.internal(err)
			}
			sess.presence.remove(t)
			if left {
				srv.broadcastPresence(ctx, t, presenceEvent{Event: "leave", ClientID: sess.id, Subject: claims.Subject})
			}
			return map[string]any{"topic": t, "left": left}, nil
		}}, nil
	case "presence.list":
		return call{run: func(ctx context.Context) (any, *rpc.Error) {
			members, err := srv.store.PresenceList(ctx, t)
			if err != nil {
				return nil, sess.internal(err)
			}
			return map[string]any{"topic": t, "members": members}, nil
		}}, nil
	default: // presence.stats
		return call{run: func(ctx context.Context) (any, *rpc.Error) {
			st, err := srv.store.PresenceStats(ctx, t)
			if err != nil {
				return nil, sess.internal(err)
			}
			return map[string]any{"topic": t, "clients": st.Clients, "subjects": st.Subjects}, nil
		}}, nil
	}
}

// historyParams are the params of history.
type historyParams struct {
	Topic  *string `json:"topic"`
	Limit  *int    `json:"limit"`
	Before *int64  `json:"before"`
}

// checkHistory checks the topic, limit and before of a history request.
func checkHistory(rawTopic *string, rawLimit *int, rawBefore *int64) (string, int, int64, *rpc.Error) {
	if rawTopic == nil {
		return "", 0, 0, rpc.InvalidParams(`"topic" is missing: history reads one topic, not a pattern`)
	}
	if err := topic.Validate(*rawTopic); err != nil {
		if errors.Is(err, topic.ErrWildcard) {
			return "", 0, 0, rpc.InvalidParams("topic %q is a pattern: history reads one topic", *rawTopic)
		}
		return "", 0, 0, rpc.InvalidParams("%v", err)
	}
	limit := defaultHistoryLimit
	if rawLimit != nil {
		limit = *rawLimit
	}
	if limit < 1 || limit > maxHistoryLimit {
		return "", 0, 0, rpc.InvalidParams(`"limit" is %d: give 1 to %d`, limit, maxHistoryLimit)
	}
	var before int64
	if rawBefore != nil {
		if *rawBefore < 1 {
			return "", 0, 0, rpc.InvalidParams(`"before" is %d: give an event id, 1 or above`, *rawBefore)
		}
		before = *rawBefore
	}
	return *rawTopic, limit, before, nil
}

// historyResult is the result of history: newest first, and the id to
// pass as before for the next page, or 0 when this page is the last.
type historyResult struct {
	Topic  string         `json:"topic"`
	Events []historyEvent `json:"events"`
	Next   int64          `json:"next_before"`
}

type historyEvent struct {
	Topic string          `json:"topic"`
	Data  json.RawMessage `json:"data"`
	ID    int64           `json:"id"`
	TS    string          `json:"ts"`
}

func (s *Server) readHistory(ctx context.Context, t string, limit int, before int64) (historyResult, error) {
	// One event more than requested shows whether an older page exists.
	events, err := s.store.History(ctx, t, limit+1, before)
	if err != nil {
		return historyResult{}, err
	}
	more := len(events) > limit
	events = events[:min(len(events), limit)]
	out := historyResult{Topic: t, Events: make([]historyEvent, len(events))}
	for i, ev := range events {
		out.Events[i] = historyEvent{Topic: ev.Topic, Data: ev.Data, ID: ev.ID, TS: ev.TS}
	}
	if more {
		out.Next = events[len(events)-1].ID
	}
	return out, nil
}

// prepareHistory checks a history request, authorized like a subscription
// to the topic.
func (sess *session) prepareHistory(raw json.RawMessage) (call, *rpc.Error) {
	var p historyParams
	if rerr := rpc.DecodeParams(raw, &p); rerr != nil {
		return call{}, rerr
	}
	t, limit, before, rerr := checkHistory(p.Topic, p.Limit, p.Before)
	if rerr != nil {
		return call{}, rerr
	}
	claims, rerr := sess.requireClaims()
	if rerr != nil {
		return call{}, rerr
	}
	if !claims.CanSubscribe(topic.MustParse(t)) {
		return call{}, rpc.Errorf(rpc.CodeForbidden, "reading the history of %q is not allowed by your token", t)
	}
	return call{run: func(ctx context.Context) (any, *rpc.Error) {
		res, err := sess.srv.readHistory(ctx, t, limit, before)
		if err != nil {
			return nil, sess.internal(err)
		}
		return res, nil
	}}, nil
}

// joinedTopics is the set of topics a session has joined, for the leave
// events when it ends.
type joinedTopics struct {
	mu     sync.Mutex
	topics map[string]bool
}

func (j *joinedTopics) add(t string) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.topics == nil {
		j.topics = map[string]bool{}
	}
	j.topics[t] = true
}

func (j *joinedTopics) remove(t string) {
	j.mu.Lock()
	defer j.mu.Unlock()
	delete(j.topics, t)
}

func (j *joinedTopics) any() bool {
	j.mu.Lock()
	defer j.mu.Unlock()
	return len(j.topics) > 0
}

// leaveAll removes the session from every topic it joined and announces
// it, when the connection ends.
func (sess *session) leaveAll(ctx context.Context) {
	if !sess.presence.any() {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	removed, err := sess.srv.store.LeaveClient(ctx, sess.id)
	if err != nil {
		sess.logger().Warn("removing the client's presence failed; it stays until this instance stops", "component", "presence", "err", err)
		return
	}
	sess.srv.broadcastLeaves(ctx, removed)
}

// The application's view of presence and history: GET /v1/presence,
// /v1/presence/stats and /v1/history, behind the API key.

func (s *Server) presenceHTTP(c echo.Context) error {
	t, ok := s.apiPresenceTopic(c)
	if !ok {
		return nil
	}
	members, err := s.store.PresenceList(c.Request().Context(), t)
	if err != nil {
		return s.apiInternal(c, err)
	}
	return c.JSON(http.StatusOK, map[string]any{"topic": t, "members": members})
}

func (s *Server) presenceStatsHTTP(c echo.Context) error {
	t, ok := s.apiPresenceTopic(c)
	if !ok {
		return nil
	}
	st, err := s.store.PresenceStats(c.Request().Context(), t)
	if err != nil {
		return s.apiInternal(c, err)
	}
	return c.JSON(http.StatusOK, map[string]any{"topic": t, "clients": st.Clients, "subjects": st.Subjects})
}

func (s *Server) historyHTTP(c echo.Context) error {
	q := c.QueryParams()

	var topicArg *string
	if q.Has("topic") {
		v := q.Get("topic")
		topicArg = &v
	}
	var limit *int
	if q.Has("limit") {
		n, err := strconv.Atoi(q.Get("limit"))
		if err != nil {
			return apiError(c, http.StatusBadRequest, "invalid_limit", fmt.Sprintf("limit %q is not a whole number: give 1 to %d", q.Get("limit"), maxHistoryLimit))
		}
		limit = &n
	}
	var before *int64
	if q.Has("before") {
		n, err := strconv.ParseInt(q.Get("before"), 10, 64)
		if err != nil {
			return apiError(c, http.StatusBadRequest, "invalid_before", fmt.Sprintf("before %q is not an event id", q.Get("before")))
		}
		before = &n
	}

	t, n, b, rerr := checkHistory(topicArg, limit, before)
	if rerr != nil {
		return apiError(c, http.StatusBadRequest, historyErrorCode(rerr.Message), rerr.Message)
	}

	res, err := s.readHistory(c.Request().Context(), t, n, b)
	if err != nil {
		return s.apiInternal(c, err)
	}
	return c.JSON(http.StatusOK, res)
}

// historyErrorCode names the parameter that checkHistory's message is
// about, as the HTTP API's error code.
func historyErrorCode(msg string) string {
	switch {
	case strings.HasPrefix(msg, `"limit"`):
		return "invalid_limit"
	case strings.HasPrefix(msg, `"before"`):
		return "invalid_before"
	default:
		return "invalid_topic"
	}
}

// apiPresenceTopic reads and checks the topic query parameter.
func (s *Server) apiPresenceTopic(c echo.Context) (string, bool) {
	if !c.QueryParams().Has("topic") {
		_ = apiError(c, http.StatusBadRequest, "invalid_topic", "the query parameter topic is missing")
		return "", false
	}
	t := c.QueryParam("topic")
	if err := topic.Validate(t); err != nil {
		_ = apiError(c, http.StatusBadRequest, "invalid_topic", err.Error())
		return "", false
	}
	return t, true
}

func (s *Server) apiInternal(c echo.Context, err error) error {
	s.log.Error("request failed", "request_id", c.Response().Header().Get(echo.HeaderXRequestID), "err", err)
	return apiError(c, http.StatusInternalServerError, "internal", "the request failed inside the sidecar; try again")
}
