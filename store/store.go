// Package store is the sidecar's access to the durable event log in
// Postgres: publishing, reading back committed events, the epoch, the
// retention point and the retention job itself.
//
// The log's schema and the reason its ids follow commit order are described
// in the migrations (db/migrations). In short: an event's id is assigned
// while its transaction commits, under a lock that Postgres releases only
// after the commit is visible, so every snapshot that sees an id sees every
// smaller committed id.
package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgsidecar/sidecar/topic"
)

// Channel is the Postgres notification channel of the durable and
// ephemeral events that the realtime functions publish.
const Channel = "realtime_events"

// TimeLayout formats an event's ts: UTC with microseconds.
const TimeLayout = "2006-01-02T15:04:05.000000Z"

var (
	// ErrTooLarge means an event is over the maximum event size, or an
	// ephemeral event does not fit in one NOTIFY. The error text names the
	// limit.
	ErrTooLarge = errors.New("event too large")
	// ErrInvalid means Postgres rejected a value, such as a topic.
	ErrInvalid = errors.New("invalid event")
	// ErrRejected means Postgres answered with an error that is neither of
	// the above, such as a missing schema or a permission denied.
	ErrRejected = errors.New("postgres rejected the publish")
	// ErrUncertain means the connection to Postgres failed during a
	// publish, possibly after the commit: the events may have been published.
	ErrUncertain = errors.New("publish outcome unknown")
	// ErrKeyReused means an idempotency key came again with another request.
	ErrKeyReused = errors.New("idempotency key reused")
	// ErrTooMany means a replay would return more events than its limit.
	ErrTooMany = errors.New("too many events to replay")
)

// Event is a committed durable event, or an ephemeral one when ID is 0.
type Event struct {
	ID    int64
	Topic string
	Data  json.RawMessage
	TS    string
}

// Publication is one event to publish.
type Publication struct {
	Topic   string
	Data    json.RawMessage
	Durable bool
}

// Store wraps a connection pool. It is safe for concurrent use; the caller
// owns the pool and closes it.
type Store struct {
	pool *pgxpool.Pool
}

// New returns a Store that runs its queries on pool.
func New(pool *pgxpool.Pool) *Store {
	return &Store{pool: pool}
}

// Pool returns the pool the store uses.
func (s *Store) Pool() *pgxpool.Pool { return s.pool }

// SetMaxEventBytes stores the maximum event size in the database, so that
// realtime.publish called from SQL enforces the same limit as the sidecar.
func (s *Store) SetMaxEventBytes(ctx context.Context, n int) error {
	_, err := s.pool.Exec(ctx, "UPDATE realtime.settings SET max_event_bytes = $1 WHERE max_event_bytes <> $1", n)
	if err != nil {
		return fmt.Errorf("store max event bytes: %w", err)
	}
	return nil
}

// Epoch returns the name of the id space, as realtime.epoch() computes it.
func (s *Store) Epoch(ctx context.Context) (string, error) {
	var epoch string
	if err := s.pool.QueryRow(ctx, "SELECT realtime.epoch()").Scan(&epoch); err != nil {
		return "", fmt.Errorf("read epoch: %w", err)
	}
	return epoch, nil
}

// Head returns the newest committed durable id, or 0 when there is none.
// Ids of deleted events count: the head never moves backwards.
func (s *Store) Head(ctx context.Context) (int64, error) {
	var head int64
	err := s.pool.QueryRow(ctx, `
		SELECT greatest(
			(SELECT coalesce(max(last_id), 0) FROM realtime.transactions),
			(SELECT purged_through FROM realtime.settings))`).Scan(&head)
	if err != nil {
		return 0, fmt.Errorf("read newest event id: %w", err)
	}
	return head, nil
}

// PurgedThrough returns the id at or below which events may have been
// deleted by retention.
func (s *Store) PurgedThrough(ctx context.Context) (int64, error) {
	var id int64
	if err := s.pool.QueryRow(ctx, "SELECT purged_through FROM realtime.settings").Scan(&id); err != nil {
		return 0, fmt.Errorf("read retention point: %w", err)
	}
	return id, nil
}

// Publish publishes one durable event in its own transaction and returns
// its id once committed.
func (s *Store) Publish(ctx context.Context, topic string, data json.RawMessage) (int64, error) {
	var segment int64
	var ord int32
	err := s.pool.QueryRow(ctx, "SELECT segment, ord FROM realtime.publish_event($1, $2)", topic, string(data)).Scan(&segment, &ord)
	if err != nil {
		return 0, classify(err)
	}

	first, err := s.firstID(ctx, s.pool, segment)
	if err != nil {
		return 0, err
	}
	return first + int64(ord), nil
}

// Broadcast sends one ephemeral event.
func (s *Store) Broadcast(ctx context.Context, topic string, data json.RawMessage) error {
	if _, err := s.pool.Exec(ctx, "SELECT realtime.broadcast($1, $2)", topic, string(data)); err != nil {
		return classify(err)
	}
	return nil
}

// PublishAll publishes every event in one transaction: all or none. It
// returns the id of each durable event, and 0 for each ephemeral one.
func (s *Store) PublishAll(ctx context.Context, pubs []Publication) ([]int64, error) {
	return s.PublishIdempotent(ctx, pubs, "", "")
}

// PublishIdempotent is PublishAll with an idempotency key. The first call
// with a key publishes and records the key in the same transaction. A later
// call with the same key and bodyHash publishes nothing and returns the
// first call's ids. A later call with another bodyHash fails with
// ErrKeyReused. A concurrent call with the same key waits for the first to
// commit or roll back. An empty key publishes without recording anything.
func (s *Store) PublishIdempotent(ctx context.Context, pubs []Publication, key, bodyHash string) ([]int64, error) {
	var refs []segmentRef
	var replayed bool

	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if key != "" {
			stored, found, err := claimKey(ctx, tx, key, bodyHash)
			if err != nil || found {
				refs, replayed = stored, found
				return err
			}
		}

		var err error
		if refs, err = publishBatch(ctx, tx, pubs); err != nil {
			return err
		}
		if key != "" {
			if _, err := tx.Exec(ctx, "UPDATE realtime.idempotency_keys SET refs = $2 WHERE key = $1", key, refs); err != nil {
				return fmt.Errorf("record idempotency key: %w", err)
			}
		}
		return nil
	})
	if err != nil {
		if errors.Is(err, ErrKeyReused) {
			return nil, err
		}
		return nil, classify(err)
	}
	if replayed && len(refs) != len(pubs) {
		return nil, fmt.Errorf("%w: the first request with this key had %d events, this one has %d", ErrKeyReused, len(refs), len(pubs))
	}
	return s.ids(ctx, refs)
}

// segmentRef locates a durable event before its id is known; a nil
// reference stands for an ephemeral event. It is stored as [segment, ord].
type segmentRef []int64

// claimKey inserts the key, or returns the references stored with it by an
// earlier request.
func claimKey(ctx context.Context, tx pgx.Tx, key, bodyHash string) ([]segmentRef, bool, error) {
	tag, err := tx.Exec(ctx, `
		INSERT INTO realtime.idempotency_keys (key, body_hash, refs) VALUES ($1, $2, '[]')
		ON CONFLICT (key) DO NOTHING`, key, bodyHash)
	if err != nil {
		return nil, false, fmt.Errorf("claim idempotency key: %w", err)
	}
	if tag.RowsAffected() == 1 {
		return nil, false, nil
	}

	var storedHash string
	var refs []segmentRef
	err = tx.QueryRow(ctx, "SELECT body_hash, refs FROM realtime.idempotency_keys WHERE key = $1", key).Scan(&storedHash, &refs)
	if err != nil {
		return nil, false, fmt.Errorf("read idempotency key: %w", err)
	}
	if storedHash != bodyHash {
		return nil, false, fmt.Errorf("%w: it was first used with another request body", ErrKeyReused)
	}
	return refs, true, nil
}

func publishBatch(ctx context.Context, tx pgx.Tx, pubs []Publication) ([]segmentRef, error) {
	refs := make([]segmentRef, len(pubs))
	batch := &pgx.Batch{}
	for i, p := range pubs {
		if !p.Durable {
			batch.Queue("SELECT realtime.broadcast($1, $2)", p.Topic, string(p.Data))
			continue
		}
		batch.Queue("SELECT segment, ord FROM realtime.publish_event($1, $2)", p.Topic, string(p.Data)).
			QueryRow(func(row pgx.Row) error {
				var segment int64
				var ord int32
				if err := row.Scan(&segment, &ord); err != nil {
					return err
				}
				refs[i] = segmentRef{segment, int64(ord)}
				return nil
			})
	}
	if err := tx.SendBatch(ctx, batch).Close(); err != nil {
		return nil, err
	}
	return refs, nil
}

// ids turns committed references into ids.
func (s *Store) ids(ctx context.Context, refs []segmentRef) ([]int64, error) {
	ids := make([]int64, len(refs))
	firsts := map[int64]int64{}
	for i, ref := range refs {
		if len(ref) != 2 {
			continue
		}
		first, ok := firsts[ref[0]]
		if !ok {
			var err error
			if first, err = s.firstID(ctx, s.pool, ref[0]); err != nil {
				return nil, err
			}
			firsts[ref[0]] = first
		}
		ids[i] = first + ref[1]
	}
	return ids, nil
}

// PurgeKeys deletes idempotency keys recorded before cutoff, in batches.
func (s *Store) PurgeKeys(ctx context.Context, cutoff time.Time, batch int) (int, error) {
	total := 0
	for {
		tag, err := s.pool.Exec(ctx, `
			DELETE FROM realtime.idempotency_keys WHERE key IN (
				SELECT key FROM realtime.idempotency_keys WHERE created_at < $1 LIMIT $2)`, cutoff, batch)
		if err != nil {
			return total, fmt.Errorf("purge idempotency keys: %w", err)
		}
		total += int(tag.RowsAffected())
		if tag.RowsAffected() < int64(batch) {
			return total, nil
		}
	}
}

type querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

func (s *Store) firstID(ctx context.Context, q querier, segment int64) (int64, error) {
	var first *int64
	err := q.QueryRow(ctx, "SELECT first_id FROM realtime.transactions WHERE segment = $1", segment).Scan(&first)
	if err != nil {
		return 0, fmt.Errorf("read id of committed segment %d: %w", segment, err)
	}
	if first == nil {
		// Only a session with triggers disabled commits a segment
		// without ids (session_replication_role = replica).
		return 0, fmt.Errorf("segment %d committed without ids: is session_replication_role set to replica?", segment)
	}
	return *first, nil
}

// Segment returns the events with the given ordinals of one committed
// segment, in order, with their ids. No ordinals means all of them.
func (s *Store) Segment(ctx context.Context, segment int64, ords []int32) ([]Event, error) {
	query := `
		SELECT t.first_id + e.ord, e.topic, e.data::text, e.ts
		  FROM realtime.transactions t
		  JOIN realtime.events e ON e.segment = t.segment
		 WHERE t.segment = $1 AND t.first_id IS NOT NULL AND ($2::int[] IS NULL OR e.ord = ANY ($2))
		 ORDER BY e.ord`
	var arg any
	if len(ords) > 0 {
		arg = ords
	}
	rows, err := s.pool.Query(ctx, query, segment, arg)
	if err != nil {
		return nil, fmt.Errorf("read segment %d: %w", segment, err)
	}
	return collect(rows)
}

// After returns up to limit committed events with ids above after, in id
// order, whatever their topic. The relay uses it to catch up after a gap.
func (s *Store) After(ctx context.Context, after int64, limit int) ([]Event, error) {
	rows, err := s.pool.Query(ctx, `
		SELECT t.first_id + e.ord AS id, e.topic, e.data::text, e.ts
		  FROM realtime.transactions t
		  JOIN realtime.events e ON e.segment = t.segment
		 WHERE t.last_id > $1 AND t.first_id + e.ord > $1
		 ORDER BY t.last_id, e.ord
		 LIMIT $2`, after, limit)
	if err != nil {
		return nil, fmt.Errorf("read events after %d: %w", after, err)
	}
	return collect(rows)
}

// Replay returns the events with ids in (after, upto] whose topics match
// one of patterns, in id order. It returns ErrTooMany, and no events, when
// there are more than limit of them.
func (s *Store) Replay(ctx context.Context, patterns []topic.Pattern, after, upto int64, limit int) ([]Event, error) {
	if upto <= after {
		return nil, nil
	}

	rows, err := s.pool.Query(ctx, `
		SELECT t.first_id + e.ord AS id, e.topic, e.data::text, e.ts
		  FROM realtime.transactions t
		  JOIN realtime.events e ON e.segment = t.segment
		 WHERE t.last_id > $1 AND t.first_id <= $2
		   AND t.first_id + e.ord > $1 AND t.first_id + e.ord <= $2
		   AND e.topic ~ $3
		 ORDER BY t.last_id, e.ord
		 LIMIT $4`, after, upto, Regexp(patterns), limit+1)
	if err != nil {
		return nil, fmt.Errorf("replay events after %d: %w", after, err)
	}
	events, err := collect(rows)
	if err != nil {
		return nil, err
	}

	// The regular expression mirrors the pattern grammar; matching again in
	// Go keeps the two from ever disagreeing about what is delivered.
	kept := events[:0]
	for _, ev := range events {
		if topic.Set(patterns).AllowsTopic(ev.Topic) {
			kept = append(kept, ev)
		}
	}
	if len(kept) > limit {
		return nil, fmt.Errorf("%w: more than %d events after id %d", ErrTooMany, limit, after)
	}
	return kept, nil
}

// Regexp returns a Postgres regular expression that matches exactly the
// topics that one of patterns matches.
func Regexp(patterns []topic.Pattern) string {
	var b strings.Builder
	b.WriteString("^(?:")
	for i, p := range patterns {
		if i > 0 {
			b.WriteByte('|')
		}
		segs := strings.Split(p.String(), ".")
		if segs[0] == "*" || segs[0] == ">" {
			// A leading wildcard never reaches a reserved namespace.
			b.WriteString("(?!(?:db|pg|presence|sys)(?:\\.|$))")
		}
		for j, seg := range segs {
			if j > 0 {
				b.WriteString("\\.")
			}
			switch seg {
			case "*":
				b.WriteString("[^.]+")
			case ">":
				b.WriteString(".+")
			default:
				// Segment characters are never special in a regular
				// expression outside brackets.
				b.WriteString(seg)
			}
		}
	}
	b.WriteString(")$")
	return b.String()
}

func collect(rows pgx.Rows) ([]Event, error) {
	var events []Event
	for rows.Next() {
		var ev Event
		var data string
		var ts time.Time
		if err := rows.Scan(&ev.ID, &ev.Topic, &data, &ts); err != nil {
			rows.Close()
			return nil, fmt.Errorf("scan event: %w", err)
		}
		ev.Data = json.RawMessage(data)
		ev.TS = ts.UTC().Format(TimeLayout)
		events = append(events, ev)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read events: %w", err)
	}
	return events, nil
}

// purgeLock is the advisory lock that keeps two sidecars from purging at
// once ("rt-purge" in ASCII).
const purgeLock int64 = 8247266778652239717

// Purge deletes events committed before cutoff, in batches of batch
// transactions, each batch in its own short transaction. It returns the
// number of transactions deleted. When another sidecar is purging, it
// returns 0 at once.
func (s *Store) Purge(ctx context.Context, cutoff time.Time, batch int) (int, error) {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return 0, fmt.Errorf("purge: %w", err)
	}
	defer conn.Release()

	var locked bool
	if err := conn.QueryRow(ctx, "SELECT pg_try_advisory_lock($1)", purgeLock).Scan(&locked); err != nil {
		return 0, fmt.Errorf("purge lock: %w", err)
	}
	if !locked {
		return 0, nil
	}
	defer func() {
		_, _ = conn.Exec(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock($1)", purgeLock)
	}()

	total := 0
	for {
		var n int
		if err := conn.QueryRow(ctx, "SELECT realtime.purge($1, $2)", cutoff, batch).Scan(&n); err != nil {
			return total, fmt.Errorf("purge events before %s: %w", cutoff.Format(time.RFC3339), err)
		}
		total += n
		if n < batch {
			return total, nil
		}
	}
}

// classify turns the errors of the realtime functions into the package's
// sentinels, keeping Postgres' message, which names the value and limit.
func classify(err error) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch {
		case pgErr.Code == "54000":
			return fmt.Errorf("%w: %s", ErrTooLarge, pgErr.Message)
		case strings.HasPrefix(pgErr.Code, "22"):
			// Class 22, data exception: the value cannot be stored, such
			// as a topic outside the grammar or a \u0000 in JSON text.
			return fmt.Errorf("%w: %s", ErrInvalid, pgErr.Message)
		}
		if !strings.HasPrefix(pgErr.Code, "57") && !strings.HasPrefix(pgErr.Code, "08") {
			return fmt.Errorf("%w: SQLSTATE %s: %s", ErrRejected, pgErr.Code, pgErr.Message)
		}
	}
	if pgconn.SafeToRetry(err) {
		// Nothing reached the server.
		return fmt.Errorf("publish: %w", err)
	}
	// A lost connection or a server shutting down (classes 08 and 57)
	// can come after the commit: the caller cannot know whether the events
	// were published.
	return fmt.Errorf("%w: %w", ErrUncertain, err)
}
