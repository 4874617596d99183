-- Idempotency keys of the HTTP publish API: a retried request with the same
-- Idempotency-Key returns the ids of the first one instead of publishing
-- again. refs holds, for each event of the request, [segment, ord] of a
-- durable event or null for an ephemeral one; the ids follow from the
-- segments' first_id once committed.

-- +goose Up
CREATE TABLE realtime.idempotency_keys (
    key        text PRIMARY KEY,
    body_hash  text        NOT NULL,
    refs       jsonb       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX idempotency_keys_created_at ON realtime.idempotency_keys (created_at);

-- +goose Down
DROP TABLE realtime.idempotency_keys;
