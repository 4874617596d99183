package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
)

const (
	// throughputBuffer is each throughput subscriber's events buffer, so
	// that a short stall of the consumer goroutine does not stall the
	// connection.
	throughputBuffer = 1 << 16

	// maxTxPerWriter bounds one writer's transactions per run in addition
	// to --duration.
	maxTxPerWriter = 10_000_000
)

// publishBatchSQL publishes $3 copies of one durable event in one
// statement, and so in one transaction.
const publishBatchSQL = `SELECT realtime.publish($1, $2::jsonb) FROM generate_series(1, $3)`

// throughputRun contains the figures of one run of the throughput
// scenario.
type throughputRun struct {
	Run          int     `json:"run"`
	Transactions int64   `json:"transactions"`
	Committed    int64   `json:"committed_events"`
	WriteSeconds float64 `json:"write_seconds"`

	// CommittedPerSec is committed events over the time from the writers'
	// start until the last writer stopped.
	CommittedPerSec float64 `json:"committed_events_per_sec"`

	// Delivered per subscriber per second: a subscriber's events over the
	// time from the writers' start until its last event arrived, so a
	// backlog that drains after the writers stop lowers it.
	DeliveredPerSecMin  float64 `json:"delivered_events_per_sec_min"`
	DeliveredPerSecMean float64 `json:"delivered_events_per_sec_mean"`

	Delivered int64 `json:"delivered"`
	Expected  int64 `json:"expected"`

	// Delivery latency under load, in milliseconds. The event's ts is
	// taken before its transaction commits, so it includes the commit.
	LatencyP50 float64 `json:"latency_p50_ms"`
	LatencyP99 float64 `json:"latency_p99_ms"`

	// How long one transaction took a writer, commit included, in
	// milliseconds.
	TxP50 float64 `json:"transaction_p50_ms"`
	TxP99 float64 `json:"transaction_p99_ms"`

	OutOfOrder       int64    `json:"out_of_order"`
	SubscriberErrors []string `json:"subscriber_errors,omitempty"`
}

// runThroughput runs the throughput scenario once: cfg.Writers writers
// commit events as fast as they can for cfg.Duration while
// cfg.Subscribers subscribers receive them.
func runThroughput(ctx context.Context, cfg config, t *target, run int) (throughputRun, error) {
	topic := newTopic(scenarioThroughput, run)
	receivers, err := dialReceivers(ctx, t, cfg.Subscribers, topic, throughputBuffer, nil)
	if err != nil {
		return throughputRun{}, err
	}
	defer closeReceivers(receivers)

	writers, err := connectWriters(ctx, t.DatabaseURL, cfg.Writers)
	if err != nil {
		return throughputRun{}, err
	}
	defer closeWriters(writers)

	if err := warmUp(ctx, receivers, &sqlPublisher{conn: writers[0]}, topic); err != nil {
		return throughputRun{}, err
	}

	var start, end time.Time
	var transactions atomic.Int64
	var txTimes []time.Duration
	write := func() (int64, error) {
		var err error
		start = time.Now()
		txTimes, err = runWriters(ctx, writers, topic, cfg, start.Add(cfg.Duration), &transactions)
		end = time.Now()
		return transactions.Load() * int64(cfg.Batch), err
	}
	committed, err := collectAll(ctx, receivers, cfg.DrainTimeout, write)
	if err != nil {
		return throughputRun{}, err
	}

	d := totals(receivers)
	lat := summarizeLatencies(d.latencies)
	tx := summarizeLatencies(txTimes)
	minRate, meanRate := deliveryRates(receivers, start)
	writeTime := end.Sub(start)
	return throughputRun{
		Run:                 run,
		Transactions:        transactions.Load(),
		Committed:           committed,
		WriteSeconds:        round3(writeTime.Seconds()),
		CommittedPerSec:     round3(float64(committed) / writeTime.Seconds()),
		DeliveredPerSecMin:  round3(minRate),
		DeliveredPerSecMean: round3(meanRate),
		Delivered:           d.delivered,
		Expected:            committed * int64(len(receivers)),
		LatencyP50:          millis(lat.P50),
		LatencyP99:          millis(lat.P99),
		TxP50:               millis(tx.P50),
		TxP99:               millis(tx.P99),
		OutOfOrder:          d.outOfOrder,
		SubscriberErrors:    errorStrings(d.errors),
	}, nil
}

// connectWriters opens n Postgres connections. On error it closes the
// ones it opened.
func connectWriters(ctx context.Context, databaseURL string, n int) ([]*pgx.Conn, error) {
	writers := make([]*pgx.Conn, 0, n)
	for i := range n {
		conn, err := pgx.Connect(ctx, databaseURL)
		if err != nil {
			closeWriters(writers)
			return nil, fmt.Errorf("connect writer %d to Postgres: %w", i, err)
		}
		writers = append(writers, conn)
	}
	return writers, nil
}

func closeWriters(writers []*pgx.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, conn := range writers {
		_ = conn.Close(ctx)
	}
}

// runWriters runs one goroutine per connection that commits transactions
// of cfg.Batch events until deadline, and counts them in transactions. It
// returns the duration of every transaction.
// The deadline does not interrupt a statement that has started, so every
// counted event has committed. Only ctx cancels a statement, and the
// first error cancels the other writers.
func runWriters(ctx context.Context, writers []*pgx.Conn, topic string, cfg config, deadline time.Time, transactions *atomic.Int64) ([]time.Duration, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	payload := string(makePayload(0, cfg.PayloadBytes))
	errs := make([]error, len(writers))
	durations := make([][]time.Duration, len(writers))
	var wg sync.WaitGroup
	for i, conn := range writers {
		wg.Go(func() {
			for n := 0; n < maxTxPerWriter && time.Now().Before(deadline); n++ {
				callCtx, callCancel := context.WithTimeout(ctx, publishTimeout)
				begin := time.Now()
				_, err := conn.Exec(callCtx, publishBatchSQL, topic, payload, cfg.Batch)
				elapsed := time.Since(begin)
				callCancel()
				if err != nil {
					errs[i] = fmt.Errorf("writer %d: %w", i, err)
					cancel()
					return
				}
				transactions.Add(1)
				durations[i] = append(durations[i], elapsed)
			}
		})
	}
	wg.Wait()
	return slices.Concat(durations...), errors.Join(errs...)
}

// deliveryRates returns the lowest and the mean events per second that
// receivers received, each over the time from start until its last
// event.
func deliveryRates(receivers []*receiver, start time.Time) (minRate, meanRate float64) {
	var sum float64
	for i, r := range receivers {
		var rate float64
		if elapsed := r.lastAt.Sub(start).Seconds(); r.received > 0 && elapsed > 0 {
			rate = float64(r.received) / elapsed
		}
		sum += rate
		if i == 0 || rate < minRate {
			minRate = rate
		}
	}
	return minRate, sum / float64(len(receivers))
}
