package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgsidecar/sidecar/client"
)

// publishSQL publishes one durable event in the current transaction.
const publishSQL = `SELECT realtime.publish($1, $2::jsonb)`

// sqlPath publishes with realtime.publish in explicit transactions on a
// connection of its own, as application code does.
type sqlPath struct {
	url  string
	conn *pgx.Conn // nil until connected, and after the connection broke
}

func (p *sqlPath) connect(ctx context.Context) error {
	if p.conn != nil && !p.conn.IsClosed() {
		return nil
	}
	p.close()

	conn, err := pgx.Connect(ctx, p.url)
	if err != nil {
		return fmt.Errorf("connect to Postgres: %w", err)
	}
	p.conn = conn
	return nil
}

// send runs b as one transaction. An error before COMMIT was sent leaves
// nothing committed, and so does an ERROR in response to COMMIT. Any
// other error from COMMIT leaves the outcome uncertain: a broken
// connection or a FATAL error, such as the one a shutdown sends, can
// follow a commit that already happened.
func (p *sqlPath) send(ctx context.Context, b batch, l *ledger) error {
	tx, err := p.conn.Begin(ctx)
	if err != nil {
		l.recordAll(b.events, outcomeFailed)
		return fmt.Errorf("begin: %w", err)
	}

	if err := publishInTx(ctx, tx, b); err != nil {
		_ = tx.Rollback(ctx)
		l.recordAll(b.events, outcomeFailed)
		return err
	}

	if b.mode == modeRollback {
		l.recordAll(b.events, outcomeRolledBack)
		if err := tx.Rollback(ctx); err != nil {
			return fmt.Errorf("rollback: %w", err)
		}
		return nil
	}

	commitErr := tx.Commit(ctx)
	var pgErr *pgconn.PgError
	rolledBack := errors.As(commitErr, &pgErr) && pgErr.Severity == "ERROR"
	for _, ev := range b.events {
		switch {
		case ev.rolledBack:
			l.record(ev, outcomeRolledBack, 0)
		case commitErr == nil:
			l.record(ev, outcomeAcked, 0)
		case rolledBack:
			l.record(ev, outcomeFailed, 0)
		default:
			l.recordUncertain([]pubEvent{ev}, commitErr)
		}
	}
	if commitErr != nil {
		return fmt.Errorf("commit: %w", commitErr)
	}
	return nil
}

// publishInTx publishes the events of b in tx. In modeSavepoint, the
// event marked rolledBack is published inside a savepoint that is then
// rolled back.
func publishInTx(ctx context.Context, tx pgx.Tx, b batch) error {
	for _, ev := range b.events {
		if ev.rolledBack {
			if _, err := tx.Exec(ctx, "SAVEPOINT soak"); err != nil {
				return fmt.Errorf("savepoint: %w", err)
			}
		}
		if _, err := tx.Exec(ctx, publishSQL, ev.topic, string(ev.data)); err != nil {
			return fmt.Errorf("publish on %s: %w", ev.topic, err)
		}
		if ev.rolledBack {
			if _, err := tx.Exec(ctx, "ROLLBACK TO SAVEPOINT soak"); err != nil {
				return fmt.Errorf("rollback to savepoint: %w", err)
			}
		}
	}
	return nil
}

func (p *sqlPath) close() {
	if p.conn == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = p.conn.Close(ctx)
	p.conn = nil
}

// httpPath publishes with POST /v1/publish to a random sidecar instance,
// trying the others when one refuses the connection.
type httpPath struct {
	client   *http.Client
	sidecars []*sidecarSlot
	apiKey   string
	rng      *rand.Rand
}

func newHTTPPath(e *environment, rng *rand.Rand) *httpPath {
	return &httpPath{
		client:   &http.Client{Timeout: publishTimeout},
		sidecars: e.sidecars,
		apiKey:   e.apiKey,
		rng:      rng,
	}
}

func (p *httpPath) connect(context.Context) error { return nil }

// httpEvent is one entry of a publish request.
type httpEvent struct {
	Topic   string          `json:"topic"`
	Data    json.RawMessage `json:"data"`
	Durable bool            `json:"durable"`
}

// send posts b as one event, or as an events list for several (and
// sometimes for one). A 4xx status means nothing was published, and a 5xx
// status or a broken connection leaves the outcome uncertain.
func (p *httpPath) send(ctx context.Context, b batch, l *ledger) error {
	entries := make([]httpEvent, len(b.events))
	for i, ev := range b.events {
		entries[i] = httpEvent{Topic: ev.topic, Data: ev.data, Durable: true}
	}
	single := len(entries) == 1 && p.rng.IntN(2) == 0
	var body []byte
	var err error
	if single {
		body, err = json.Marshal(entries[0])
	} else {
		body, err = json.Marshal(map[string]any{"events": entries})
	}
	if err != nil {
		l.recordAll(b.events, outcomeFailed)
		return fmt.Errorf("encode publish request: %w", err)
	}

	status, answer, err := p.post(ctx, body)
	switch {
	case errors.Is(err, errNotSent):
		l.recordAll(b.events, outcomeFailed)
		return err
	case err != nil:
		l.recordUncertain(b.events, err)
		return err
	case status == http.StatusOK:
		return p.recordIDs(b, l, single, answer)
	case status >= 400 && status < 500:
		if b.mode == modeRejected {
			l.recordAll(b.events, outcomeRejected)
			return nil
		}
		l.recordAll(b.events, outcomeFailed)
		return fmt.Errorf("status %d: %s", status, answer)
	default:
		err := fmt.Errorf("status %d: %s", status, answer)
		l.recordUncertain(b.events, err)
		return err
	}
}

// recordIDs records the ids of a 200 response.
func (p *httpPath) recordIDs(b batch, l *ledger, single bool, answer []byte) error {
	var result struct {
		ID  int64   `json:"id"`
		IDs []int64 `json:"ids"`
	}
	if err := json.Unmarshal(answer, &result); err != nil {
		l.recordAll(b.events, outcomeAcked)
		return fmt.Errorf("decode publish response %q: %w", answer, err)
	}
	if single {
		result.IDs = []int64{result.ID}
	}
	if len(result.IDs) != len(b.events) {
		l.recordAll(b.events, outcomeAcked)
		return fmt.Errorf("publish response has %d ids for %d events: %s", len(result.IDs), len(b.events), answer)
	}
	for i, ev := range b.events {
		l.record(ev, outcomeAcked, result.IDs[i])
	}
	if b.mode == modeRejected {
		return fmt.Errorf("a batch with the invalid topic %q was accepted", b.events[len(b.events)-1].topic)
	}
	return nil
}

// post sends body to one instance after another, in random order, until
// one accepts the connection. It returns errNotSent when none did.
func (p *httpPath) post(ctx context.Context, body []byte) (int, []byte, error) {
	var lastErr error
	for _, i := range p.rng.Perm(len(p.sidecars)) {
		url := p.sidecars[i].httpURL() + "/v1/publish"
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
		if err != nil {
			return 0, nil, fmt.Errorf("publish request: %w", err)
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer "+p.apiKey)

		resp, err := p.client.Do(req)
		if isDialError(err) {
			lastErr = err
			continue
		}
		if err != nil {
			return 0, nil, fmt.Errorf("POST %s: %w", url, err)
		}
		answer, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
		if err != nil {
			return 0, nil, fmt.Errorf("POST %s: read response: %w", url, err)
		}
		return resp.StatusCode, bytes.TrimSpace(answer), nil
	}
	return 0, nil, fmt.Errorf("%w: %w", errNotSent, lastErr)
}

func (p *httpPath) close() { p.client.CloseIdleConnections() }

// isDialError reports whether err happened while connecting, so that the
// request was never sent.
func isDialError(err error) bool {
	var opErr *net.OpError
	return errors.As(err, &opErr) && opErr.Op == "dial"
}

// wsPath publishes with publish requests over a websocket to one sidecar
// instance, and connects to another one, chosen at random, when that
// connection ends.
type wsPath struct {
	sidecars []*sidecarSlot
	token    string
	rng      *rand.Rand
	conn     *client.Conn
}

func (p *wsPath) connect(ctx context.Context) error {
	if p.conn != nil && p.conn.Err() == nil {
		return nil
	}
	p.close()

	conn, _, err := dialAny(ctx, p.sidecars, p.rng, client.Options{Token: p.token})
	if err != nil {
		return err
	}
	p.conn = conn
	return nil
}

// send publishes the events of b one by one: the websocket API has no
// multi-event transaction. An invalid-params error means the event was
// not published. Any other error leaves it uncertain, and the rest of
// the batch is not sent.
func (p *wsPath) send(ctx context.Context, b batch, l *ledger) error {
	for i, ev := range b.events {
		id, err := p.conn.Publish(ctx, ev.topic, ev.data, true)
		if err == nil {
			l.record(ev, outcomeAcked, id)
			continue
		}

		var rpcErr *client.RPCError
		if errors.As(err, &rpcErr) && rpcErr.Code == client.CodeInvalidParams {
			l.record(ev, outcomeFailed, 0)
		} else {
			l.recordUncertain([]pubEvent{ev}, err)
		}
		l.recordAll(b.events[i+1:], outcomeFailed)
		return fmt.Errorf("publish on %s: %w", ev.topic, err)
	}
	return nil
}

func (p *wsPath) close() {
	if p.conn != nil {
		_ = p.conn.CloseNow()
		p.conn = nil
	}
}

// dialTimeout bounds one websocket dial, welcome included.
const dialTimeout = 5 * time.Second

// dialAny connects to the sidecar instances in random order until one
// accepts, and returns the connection and the instance's index.
func dialAny(ctx context.Context, sidecars []*sidecarSlot, rng *rand.Rand, opts client.Options) (*client.Conn, int, error) {
	var errs []error
	for _, i := range rng.Perm(len(sidecars)) {
		dialCtx, cancel := context.WithTimeout(ctx, dialTimeout)
		conn, err := client.Dial(dialCtx, sidecars[i].wsURL(), opts)
		cancel()
		if err == nil {
			return conn, i, nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", sidecars[i].name(), err))
		if ctx.Err() != nil {
			break
		}
	}
	return nil, -1, fmt.Errorf("connect websocket: %w", errors.Join(errs...))
}
