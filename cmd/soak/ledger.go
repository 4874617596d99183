package main

import (
	"encoding/json"
	"math/rand/v2"
	"strconv"
	"strings"
)

// topicPrefix is the namespace of every soak topic. Publishers publish on
// topicPrefix + path + "." + leaf, such as soak.sql.b.
const topicPrefix = "soak."

// topicLeaves are the last segments of the soak's topics, so that
// subscriptions can match a part of each publish path.
var topicLeaves = []string{"a", "b", "c"}

// largePadBytes is the padding of a large event: past the 7,999 bytes of
// one NOTIFY payload, so the sidecar reads it from the table.
const largePadBytes = 10_000

// outcome is the result a publisher observed for one event it tried to
// publish.
type outcome uint8

const (
	outcomeNone       outcome = iota
	outcomeAcked              // the publish succeeded: the event must be committed
	outcomeRolledBack         // rolled back on purpose: must not be committed
	outcomeRejected           // refused on purpose with an invalid entry: must not be committed
	outcomeFailed             // failed before a commit was requested: must not be committed
	outcomeUncertain          // the commit may or may not have happened
)

func (o outcome) String() string {
	switch o {
	case outcomeAcked:
		return "acknowledged"
	case outcomeRolledBack:
		return "rolled back"
	case outcomeRejected:
		return "rejected"
	case outcomeFailed:
		return "failed"
	case outcomeUncertain:
		return "uncertain"
	default:
		return "none"
	}
}

// marker is the part of every soak event's data that names the attempt
// that published it: publisher, event number and transaction number.
type marker struct {
	Publisher string `json:"p"`
	Seq       int64  `json:"n"`
	Tx        int64  `json:"t"`
}

// txMode is the way a publisher ends one transaction.
type txMode int

const (
	modeCommit    txMode = iota
	modeRollback         // SQL: publish, then ROLLBACK
	modeSavepoint        // SQL: publish, SAVEPOINT, publish, ROLLBACK TO SAVEPOINT, publish, COMMIT
	modeRejected         // HTTP: a batch with one invalid topic, which must publish nothing
)

// batch is one transaction's events.
type batch struct {
	tx     int64
	mode   txMode
	events []pubEvent
}

// pubEvent is one event of a batch. rolledBack marks the event that a
// savepoint rolls back.
type pubEvent struct {
	seq        int64
	topic      string
	data       json.RawMessage
	rolledBack bool
}

// ledger records the outcome of every event one publisher tried to
// publish. It is written by the publisher's goroutine only, and read after
// that goroutine has ended.
type ledger struct {
	publisher string // such as sql-1
	path      string // sql, http or ws
	events    []ledgerEntry
	txs       int64 // transactions started
	lastErr   string
	errors    int64
}

// ledgerEntry is the outcome of the event with seq index+1. id is the id
// the publish returned, or 0 when it returned none. err is the error that
// made the outcome uncertain.
type ledgerEntry struct {
	outcome outcome
	id      int64
	tx      int64
	err     string
}

// newBatch builds the next transaction of a publisher on path: usually one
// event, sometimes two to five, and some rolled back, depending on the
// path.
func (l *ledger) newBatch(rng *rand.Rand, largeFraction float64) batch {
	l.txs++
	b := batch{tx: l.txs, mode: modeCommit}

	n := 1
	if rng.Float64() < 0.3 {
		n = 2 + rng.IntN(4)
	}
	r := rng.Float64()
	switch {
	case l.path == "sql" && r < 0.08:
		b.mode = modeRollback
	case l.path == "sql" && r < 0.15:
		b.mode = modeSavepoint
		n = 3
	case l.path == "http" && r < 0.03:
		b.mode = modeRejected
		n = max(n, 2)
	}

	for i := range n {
		ev := l.add(b.tx, topicPrefix+l.path+"."+topicLeaves[rng.IntN(len(topicLeaves))], rng.Float64() < largeFraction)
		if b.mode == modeSavepoint && i == 1 {
			ev.rolledBack = true
		}
		if b.mode == modeRejected && i == n-1 {
			ev.topic = topicPrefix + l.path + "..invalid"
		}
		b.events = append(b.events, ev)
	}
	return b
}

// newBurst builds one transaction of n large events on topic.
func (l *ledger) newBurst(topic string, n int) batch {
	l.txs++
	b := batch{tx: l.txs, mode: modeCommit}
	for range n {
		b.events = append(b.events, l.add(b.tx, topic, true))
	}
	return b
}

// add appends an event of transaction tx to the ledger and returns it.
func (l *ledger) add(tx int64, topic string, large bool) pubEvent {
	seq := int64(len(l.events)) + 1
	l.events = append(l.events, ledgerEntry{tx: tx})
	return pubEvent{seq: seq, topic: topic, data: makeData(marker{l.publisher, seq, tx}, large)}
}

// record sets the outcome of ev.
func (l *ledger) record(ev pubEvent, o outcome, id int64) {
	e := &l.events[ev.seq-1]
	e.outcome = o
	e.id = id
}

// recordAll sets the outcome of every event of evs.
func (l *ledger) recordAll(evs []pubEvent, o outcome) {
	for _, ev := range evs {
		l.record(ev, o, 0)
	}
}

// recordUncertain marks evs as uncertain because of err.
func (l *ledger) recordUncertain(evs []pubEvent, err error) {
	for _, ev := range evs {
		e := &l.events[ev.seq-1]
		e.outcome = outcomeUncertain
		e.id = 0
		e.err = err.Error()
	}
}

// fail counts an error and keeps its message for the report.
func (l *ledger) fail(err error) {
	l.errors++
	l.lastErr = err.Error()
}

// makeData returns the JSON data of an event: its marker, and about
// largePadBytes of padding when large is set.
func makeData(m marker, large bool) json.RawMessage {
	var b strings.Builder
	b.WriteString(`{"p":`)
	b.WriteString(strconv.Quote(m.Publisher))
	b.WriteString(`,"n":`)
	b.WriteString(strconv.FormatInt(m.Seq, 10))
	b.WriteString(`,"t":`)
	b.WriteString(strconv.FormatInt(m.Tx, 10))
	if large {
		b.WriteString(`,"pad":"`)
		b.WriteString(strings.Repeat("x", largePadBytes))
		b.WriteString(`"`)
	}
	b.WriteString(`}`)
	return json.RawMessage(b.String())
}
