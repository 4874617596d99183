package store

import (
	"context"
	"encoding/json"
	"fmt"
	"time"
)

// PresenceExpiry is how long after its instance's last heartbeat a
// presence row stops being listed. Instances refresh their heartbeat every
// 10 seconds.
const PresenceExpiry = 30 * time.Second

// Member is one client present on a topic.
type Member struct {
	ClientID string          `json:"client_id"`
	Subject  string          `json:"sub"`
	Info     json.RawMessage `json:"info,omitempty"`
	JoinedAt time.Time       `json:"joined_at"`
}

// PresenceStats counts the clients present on a topic.
type PresenceStats struct {
	Clients  int `json:"clients"`
	Subjects int `json:"subjects"`
}

// Presence is a presence row removed by Leave, LeaveClient or a sweep.
type Presence struct {
	Topic    string
	ClientID string
	Subject  string
}

// Join records clientID of instance as present on topic with info, or
// updates its info when it is present already.
func (s *Store) Join(ctx context.Context, topic, clientID, instance, subject string, info json.RawMessage) error {
	var infoArg any
	if len(info) > 0 {
		infoArg = string(info)
	}
	_, err := s.pool.Exec(ctx, `
		INSERT INTO realtime.presence (topic, client_id, instance, subject, info)
		VALUES ($1, $2, $3, $4, $5::jsonb)
		ON CONFLICT (topic, client_id) DO UPDATE SET info = excluded.info`,
		topic, clientID, instance, subject, infoArg)
	if err != nil {
		return fmt.Errorf("join presence of %s: %w", topic, err)
	}
	return nil
}

// Leave removes clientID from topic and reports whether it was present.
func (s *Store) Leave(ctx context.Context, topic, clientID string) (bool, error) {
	tag, err := s.pool.Exec(ctx, `DELETE FROM realtime.presence WHERE topic = $1 AND client_id = $2`, topic, clientID)
	if err != nil {
		return false, fmt.Errorf("leave presence of %s: %w", topic, err)
	}
	return tag.RowsAffected() > 0, nil
}

// LeaveClient removes clientID from every topic and returns the rows it
// removed.
func (s *Store) LeaveClient(ctx context.Context, clientID string) ([]Presence, error) {
	return s.removePresence(ctx, `DELETE FROM realtime.presence WHERE client_id = $1 RETURNING topic, client_id, subject`, clientID)
}

// LeaveInstance removes every client of instance and returns the rows it
// removed.
func (s *Store) LeaveInstance(ctx context.Context, instance string) ([]Presence, error) {
	return s.removePresence(ctx, `DELETE FROM realtime.presence WHERE instance = $1 RETURNING topic, client_id, subject`, instance)
}

// SweepPresence removes the rows of instances without a heartbeat within
// PresenceExpiry and returns them. Concurrent sweeps remove each row once.
func (s *Store) SweepPresence(ctx context.Context) ([]Presence, error) {
	return s.removePresence(ctx, `
		DELETE FROM realtime.presence p
		 WHERE NOT EXISTS (SELECT 1 FROM realtime.instances i
		                    WHERE i.id = p.instance AND i.seen_at > now() - make_interval(secs => $1))
		RETURNING topic, client_id, subject`, PresenceExpiry.Seconds())
}

func (s *Store) removePresence(ctx context.Context, sql string, arg any) ([]Presence, error) {
	rows, err := s.pool.Query(ctx, sql, arg)
	if err != nil {
		return nil, fmt.Errorf("remove presence: %w", err)
	}
	defer rows.Close()

	var out []Presence
	for rows.Next() {
		var p Presence
		if err := rows.Scan(&p.Topic, &p.ClientID, &p.Subject); err != nil {
			return nil, fmt.Errorf("remove presence: %w", err)
		}
		out = append(out, p)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("remove presence: %w", err)
	}
	return out, nil
}

// maxPresenceList bounds the members that one list returns.
const maxPresenceList = 10000

// PresenceList returns the clients present on topic whose instance is
// alive, in the order they joined, at most 10,000.
func (s *Store) PresenceList(ctx context.Context, topic string) ([]Member, error) {
	rows, err := s.pool.Query(ctx, `
		SELECT p.client_id, p.subject, p.info::text, p.joined_at
		  FROM realtime.presence p
		  JOIN realtime.instances i ON i.id = p.instance
		 WHERE p.topic = $1 AND i.seen_at > now() - make_interval(secs => $2)
		 ORDER BY p.joined_at, p.client_id
		 LIMIT $3`, topic, PresenceExpiry.Seconds(), maxPresenceList)
	if err != nil {
		return nil, fmt.Errorf("list presence of %s: %w", topic, err)
	}
	defer rows.Close()

	members := []Member{}
	for rows.Next() {
		var m Member
		var info *string
		if err := rows.Scan(&m.ClientID, &m.Subject, &info, &m.JoinedAt); err != nil {
			return nil, fmt.Errorf("list presence of %s: %w", topic, err)
		}
		if info != nil {
			m.Info = json.RawMessage(*info)
		}
		members = append(members, m)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list presence of %s: %w", topic, err)
	}
	return members, nil
}

// PresenceStats counts the clients and distinct subjects present on topic.
func (s *Store) PresenceStats(ctx context.Context, topic string) (PresenceStats, error) {
	var st PresenceStats
	err := s.pool.QueryRow(ctx, `
		SELECT count(*), count(DISTINCT p.subject)
		  FROM realtime.presence p
		  JOIN realtime.instances i ON i.id = p.instance
		 WHERE p.topic = $1 AND i.seen_at > now() - make_interval(secs => $2)`,
		topic, PresenceExpiry.Seconds()).Scan(&st.Clients, &st.Subjects)
	if err != nil {
		return PresenceStats{}, fmt.Errorf("count presence of %s: %w", topic, err)
	}
	return st, nil
}

// History returns the newest durable events of topic with an id below
// before (0 for no bound), newest first, at most limit.
func (s *Store) History(ctx context.Context, topic string, limit int, before int64) ([]Event, error) {
	if before <= 0 {
		before = 1<<63 - 1
	}
	rows, err := s.pool.Query(ctx, `
		SELECT t.first_id + e.ord AS id, e.topic, e.data::text, e.ts
		  FROM realtime.events e
		  JOIN realtime.transactions t ON t.segment = e.segment
		 WHERE e.topic = $1 AND t.first_id IS NOT NULL AND t.first_id + e.ord < $2
		 ORDER BY id DESC
		 LIMIT $3`, topic, before, limit)
	if err != nil {
		return nil, fmt.Errorf("read history of %s: %w", topic, classify(err))
	}
	defer rows.Close()

	events := []Event{}
	for rows.Next() {
		var ev Event
		var data string
		var ts time.Time
		if err := rows.Scan(&ev.ID, &ev.Topic, &data, &ts); err != nil {
			return nil, fmt.Errorf("read history of %s: %w", topic, err)
		}
		ev.Data = json.RawMessage(data)
		ev.TS = ts.UTC().Format(TimeLayout)
		events = append(events, ev)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read history of %s: %w", topic, err)
	}
	return events, nil
}
