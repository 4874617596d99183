package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"time"

	"github.com/jackc/pgx/v5"
)

// committedSQL reads every committed soak event with its id, which is the
// first id of its transaction's segment plus its ordinal.
const committedSQL = `
SELECT t.first_id + e.ord, e.topic, e.data::text, e.ts
FROM realtime.transactions t JOIN realtime.events e USING (segment)
WHERE e.topic LIKE 'soak.%'
ORDER BY 1`

// committedEvent is one row of committedSQL.
type committedEvent struct {
	id        int64
	topic     string
	hash      uint64 // eventHash of topic and data
	marker    marker
	hasMarker bool
	ts        time.Time
}

// readCommitted reads the committed soak events in id order. It retries
// for up to a minute while Postgres does not accept connections.
func readCommitted(ctx context.Context, dbURL string) ([]committedEvent, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()

	var conn *pgx.Conn
	var err error
	for conn == nil {
		if conn, err = pgx.Connect(ctx, dbURL); err != nil {
			if !sleepUntil(ctx, time.Now().Add(500*time.Millisecond)) {
				return nil, fmt.Errorf("connect to read the committed events: %w", err)
			}
		}
	}
	defer conn.Close(context.WithoutCancel(ctx))

	rows, err := conn.Query(ctx, committedSQL)
	if err != nil {
		return nil, fmt.Errorf("read the committed events: %w", err)
	}
	var events []committedEvent
	for rows.Next() {
		var ev committedEvent
		var id *int64
		var data string
		if err := rows.Scan(&id, &ev.topic, &data, &ev.ts); err != nil {
			return nil, fmt.Errorf("read the committed events: %w", err)
		}
		if id == nil {
			return nil, fmt.Errorf("read the committed events: an event on %s has no id although its transaction is visible", ev.topic)
		}
		ev.id = *id
		ev.hash = eventHash(ev.topic, []byte(data))
		ev.hasMarker = json.Unmarshal([]byte(data), &ev.marker) == nil && ev.marker.Publisher != ""
		events = append(events, ev)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read the committed events: %w", err)
	}
	return events, nil
}

// eventHash hashes a topic and a JSON value in a canonical form, so that
// the same value hashes alike however it is spaced or its keys ordered:
// the sidecar may send the text Postgres stores or another rendering of
// it. Data that is not valid JSON is hashed as it is.
func eventHash(topic string, data []byte) uint64 {
	h := fnv.New64a()
	h.Write([]byte(topic))
	h.Write([]byte{0})

	var v any
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	if dec.Decode(&v) != nil {
		h.Write(data)
		return h.Sum64()
	}
	canonical, err := json.Marshal(v) // sorts object keys
	if err != nil {
		h.Write(data)
		return h.Sum64()
	}
	h.Write(canonical)
	return h.Sum64()
}

// maxSamples bounds the example ids and messages kept per check.
const maxSamples = 20

// deliveryResult compares what one subscription received with the
// committed events it should have received: those above its first head
// that its patterns match.
type deliveryResult struct {
	Committed  int `json:"committed"`  // events expected
	Delivered  int `json:"delivered"`  // events received, duplicates included
	Missing    int `json:"missing"`    // expected events never received
	Duplicated int `json:"duplicated"` // receptions beyond the first of an event
	// OutOfOrder counts receptions whose id is below the highest id
	// received before, on this subscription.
	OutOfOrder int `json:"out_of_order"`
	// Mismatched counts events whose topic or data differ from the table.
	Mismatched int `json:"mismatched"`
	// Unexpected counts receptions of ids that are not expected: not in
	// the table, at or below the head, or not matching the patterns.
	Unexpected int `json:"unexpected"`

	MissingIDs    []int64 `json:"missing_ids,omitempty"`
	DuplicatedIDs []int64 `json:"duplicated_ids,omitempty"`
	UnexpectedIDs []int64 `json:"unexpected_ids,omitempty"`
}

// compareDeliveries computes the deliveryResult of one subscription.
// events must be sorted by id, and byID indexes them.
func compareDeliveries(events []committedEvent, byID map[int64]*committedEvent, head int64, matches func(string) bool, deliveries []delivery) deliveryResult {
	var r deliveryResult
	counts := make(map[int64]int)

	var highest int64
	for i, d := range deliveries {
		r.Delivered++
		if i > 0 && d.id < highest {
			r.OutOfOrder++
		}
		highest = max(highest, d.id)

		ev := byID[d.id]
		if ev == nil || d.id <= head || !matches(ev.topic) {
			r.Unexpected++
			r.UnexpectedIDs = appendSample(r.UnexpectedIDs, d.id)
			continue
		}
		counts[d.id]++
		if counts[d.id] == 1 && d.hash != ev.hash {
			r.Mismatched++
		}
		if counts[d.id] == 2 {
			r.DuplicatedIDs = appendSample(r.DuplicatedIDs, d.id)
		}
	}

	for _, ev := range events {
		if ev.id <= head || !matches(ev.topic) {
			continue
		}
		r.Committed++
		switch n := counts[ev.id]; {
		case n == 0:
			r.Missing++
			r.MissingIDs = appendSample(r.MissingIDs, ev.id)
		case n > 1:
			r.Duplicated += n - 1
		}
	}
	return r
}

func appendSample(ids []int64, id int64) []int64 {
	if len(ids) < maxSamples {
		return append(ids, id)
	}
	return ids
}

// add adds o's counts to r, but not its samples.
func (r *deliveryResult) add(o deliveryResult) {
	r.Committed += o.Committed
	r.Delivered += o.Delivered
	r.Missing += o.Missing
	r.Duplicated += o.Duplicated
	r.OutOfOrder += o.OutOfOrder
	r.Mismatched += o.Mismatched
	r.Unexpected += o.Unexpected
}

// publishCounts sums the outcomes of one publisher's events, or of several.
type publishCounts struct {
	Transactions int64 `json:"transactions"`
	Attempted    int   `json:"attempted"` // events the publisher tried to publish
	Acked        int   `json:"acked"`
	RolledBack   int   `json:"rolled_back"`
	Rejected     int   `json:"rejected"`
	Failed       int   `json:"failed"`
	Uncertain    int   `json:"uncertain"`
	// UncertainCommitted counts uncertain events found in the table.
	UncertainCommitted int `json:"uncertain_committed"`
	// CommittedWithError contains some errors that publishes returned for
	// events that are in the table.
	CommittedWithError []string `json:"committed_with_error,omitempty"`
	Errors             int64    `json:"errors"`
	LastError          string   `json:"last_error"`
}

func (c *publishCounts) add(o publishCounts) {
	c.Transactions += o.Transactions
	c.Attempted += o.Attempted
	c.Acked += o.Acked
	c.RolledBack += o.RolledBack
	c.Rejected += o.Rejected
	c.Failed += o.Failed
	c.Uncertain += o.Uncertain
	c.UncertainCommitted += o.UncertainCommitted
	c.Errors += o.Errors
}

// integrity is the comparison of the publishers' ledgers with the table.
// Every count but UncertainCommitted is an error.
type integrity struct {
	// AckedMissing counts acknowledged events not in the table: commits
	// lost, or a success reported for a publish that did not commit.
	AckedMissing int `json:"acked_missing"`
	// NotCommittedPresent counts rolled back, rejected or failed events
	// found in the table.
	NotCommittedPresent int `json:"not_committed_present"`
	// CommittedTwice counts events whose marker is in the table more than
	// once.
	CommittedTwice int `json:"committed_twice"`
	// IDMismatch counts acknowledged events whose returned id differs from
	// the table's.
	IDMismatch int `json:"id_mismatch"`
	// PartialTransactions counts transactions with an uncertain outcome
	// that are in the table in part.
	PartialTransactions int `json:"partial_transactions"`
	// Unmarked counts soak events in the table that no publisher
	// recorded.
	Unmarked int      `json:"unmarked"`
	Samples  []string `json:"samples,omitempty"`
}

func (in *integrity) failures() int {
	return in.AckedMissing + in.NotCommittedPresent + in.CommittedTwice + in.IDMismatch + in.PartialTransactions + in.Unmarked
}

func (in *integrity) sample(format string, args ...any) {
	if len(in.Samples) < maxSamples {
		in.Samples = append(in.Samples, fmt.Sprintf(format, args...))
	}
}

// checkLedgers compares the ledgers with the committed events. It returns
// the counts of each publisher, by name, and the integrity findings.
func checkLedgers(events []committedEvent, ledgers []*ledger) (map[string]publishCounts, integrity) {
	var in integrity
	byName := make(map[string]*ledger, len(ledgers))
	found := make(map[string][][]int64, len(ledgers)) // publisher -> seq-1 -> table ids
	for _, l := range ledgers {
		byName[l.publisher] = l
		found[l.publisher] = make([][]int64, len(l.events))
	}

	for _, ev := range events {
		l := byName[ev.marker.Publisher]
		if !ev.hasMarker || l == nil || ev.marker.Seq < 1 || ev.marker.Seq > int64(len(l.events)) {
			in.Unmarked++
			in.sample("id %d on %s: no publisher recorded it", ev.id, ev.topic)
			continue
		}
		ids := found[l.publisher]
		ids[ev.marker.Seq-1] = append(ids[ev.marker.Seq-1], ev.id)
	}

	counts := make(map[string]publishCounts, len(ledgers))
	for _, l := range ledgers {
		c := publishCounts{Transactions: l.txs, Attempted: len(l.events), Errors: l.errors, LastError: l.lastErr}
		partial := make(map[int64][2]int) // tx -> uncertain events, of which committed
		for i, e := range l.events {
			ids := found[l.publisher][i]
			where := fmt.Sprintf("%s event %d (transaction %d)", l.publisher, i+1, e.tx)
			if len(ids) > 1 {
				in.CommittedTwice++
				in.sample("%s: in the table %d times, ids %v", where, len(ids), ids)
			}

			switch e.outcome {
			case outcomeAcked:
				c.Acked++
				if len(ids) == 0 {
					in.AckedMissing++
					in.sample("%s: acknowledged but not in the table", where)
				} else if e.id != 0 && ids[0] != e.id {
					in.IDMismatch++
					in.sample("%s: the publish returned id %d, the table has %d", where, e.id, ids[0])
				}
			case outcomeRolledBack, outcomeRejected, outcomeFailed:
				switch e.outcome {
				case outcomeRolledBack:
					c.RolledBack++
				case outcomeRejected:
					c.Rejected++
				default:
					c.Failed++
				}
				if len(ids) > 0 {
					in.NotCommittedPresent++
					in.sample("%s: %s but in the table with id %d", where, e.outcome, ids[0])
				}
			case outcomeUncertain:
				c.Uncertain++
				p := partial[e.tx]
				p[0]++
				if len(ids) > 0 {
					c.UncertainCommitted++
					p[1]++
					if len(c.CommittedWithError) < 5 {
						c.CommittedWithError = append(c.CommittedWithError, fmt.Sprintf("%s: committed with id %d, but the publish returned: %s", where, ids[0], e.err))
					}
				}
				partial[e.tx] = p
			}
		}
		for tx, p := range partial {
			if p[1] != 0 && p[1] != p[0] {
				in.PartialTransactions++
				in.sample("%s transaction %d: %d of its %d uncertain events are in the table", l.publisher, tx, p[1], p[0])
			}
		}
		counts[l.publisher] = c
	}
	return counts, in
}
