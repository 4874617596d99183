package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgsidecar/sidecar/auth"
	"github.com/pgsidecar/sidecar/client"
)

// publishTimeout bounds one publish call.
const publishTimeout = 10 * time.Second

// topicPrefix is the namespace of every benchmark topic. Each run uses a
// new topic below it, so that events of an earlier run never count.
const topicPrefix = "bench."

// publisher publishes durable events one at a time. It is used by one
// goroutine at a time.
type publisher interface {
	publish(ctx context.Context, topic string, data json.RawMessage) error
	close() error
}

// newPublisher connects the publisher for via: sql, http or ws.
func newPublisher(ctx context.Context, via string, t *target) (publisher, error) {
	switch via {
	case viaSQL:
		conn, err := pgx.Connect(ctx, t.DatabaseURL)
		if err != nil {
			return nil, fmt.Errorf("connect publisher to Postgres: %w", err)
		}
		return &sqlPublisher{conn: conn}, nil
	case viaHTTP:
		return &httpPublisher{
			client: &http.Client{Timeout: publishTimeout},
			url:    t.HTTPURL + "/v1/publish",
			apiKey: t.APIKey,
		}, nil
	case viaWS:
		token, err := signToken(t, "bench-publisher")
		if err != nil {
			return nil, err
		}
		conn, err := client.Dial(ctx, t.WSURL, client.Options{Token: token})
		if err != nil {
			return nil, fmt.Errorf("connect publisher websocket: %w", err)
		}
		return &wsPublisher{conn: conn}, nil
	}
	return nil, fmt.Errorf("unknown publish path %q", via)
}

// publishSQL is one durable event per statement. Outside an explicit
// transaction each statement commits on its own.
const publishSQL = `SELECT realtime.publish($1, $2::jsonb)`

// sqlPublisher publishes with realtime.publish on its own connection.
type sqlPublisher struct{ conn *pgx.Conn }

func (p *sqlPublisher) publish(ctx context.Context, topic string, data json.RawMessage) error {
	if _, err := p.conn.Exec(ctx, publishSQL, topic, string(data)); err != nil {
		return fmt.Errorf("publish on %s with SQL: %w", topic, err)
	}
	return nil
}

func (p *sqlPublisher) close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return p.conn.Close(ctx)
}

// httpPublisher publishes with POST /v1/publish over keep-alive
// connections.
type httpPublisher struct {
	client *http.Client
	url    string
	apiKey string
}

func (p *httpPublisher) publish(ctx context.Context, topic string, data json.RawMessage) error {
	body, err := json.Marshal(map[string]any{"topic": topic, "data": data, "durable": true})
	if err != nil {
		return fmt.Errorf("encode publish request: %w", err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.url, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("publish request: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+p.apiKey)

	resp, err := p.client.Do(req)
	if err != nil {
		return fmt.Errorf("POST %s: %w", p.url, err)
	}
	defer resp.Body.Close()

	// Reading the body to its end lets the client reuse the connection.
	answer, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return fmt.Errorf("POST %s: read response: %w", p.url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("POST %s: status %d: %s", p.url, resp.StatusCode, bytes.TrimSpace(answer))
	}
	return nil
}

func (p *httpPublisher) close() error {
	p.client.CloseIdleConnections()
	return nil
}

// wsPublisher publishes with publish requests on its own websocket.
type wsPublisher struct{ conn *client.Conn }

func (p *wsPublisher) publish(ctx context.Context, topic string, data json.RawMessage) error {
	if _, err := p.conn.Publish(ctx, topic, data, true); err != nil {
		return fmt.Errorf("publish on %s over the websocket: %w", topic, err)
	}
	return nil
}

func (p *wsPublisher) close() error { return p.conn.Close() }

// signToken signs a client token that may subscribe and publish below
// topicPrefix for an hour.
func signToken(t *target, subject string) (string, error) {
	patterns := []string{topicPrefix + ">"}
	token, err := auth.Sign(t.JWTSecret, subject, auth.Realtime{Subscribe: patterns, Publish: patterns}, time.Hour)
	if err != nil {
		return "", fmt.Errorf("sign token for %s: %w", subject, err)
	}
	return token, nil
}

// newTopic returns a topic that no earlier run has used.
func newTopic(scenario string, run int) string {
	return topicPrefix + scenario + ".run" + strconv.Itoa(run) + "-" + randomHex(4)
}

// makePayload returns a JSON object of about size bytes that carries seq:
// {"seq":N,"pad":"xxx..."}. It is never smaller than the object without
// padding. Postgres stores it as jsonb, whose text form adds a space after
// each colon and comma.
func makePayload(seq, size int) json.RawMessage {
	head := `{"seq":` + strconv.Itoa(seq) + `,"pad":"`
	const tail = `"}`
	pad := max(size-len(head)-len(tail), 0)
	return json.RawMessage(head + strings.Repeat("x", pad) + tail)
}
