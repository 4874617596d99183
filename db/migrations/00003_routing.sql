-- Routing of the application's calls to clients between sidecar instances.
-- instances lists the running sidecars, each refreshing seen_at while it
-- runs, so that a call to every connection of a subject knows how many
-- instances must answer. rpc_messages holds routed requests and answers too
-- large for one NOTIFY; the receiver reads them by id.

-- +goose Up
CREATE TABLE realtime.instances (
    id      text PRIMARY KEY,
    seen_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE realtime.rpc_messages (
    id         bigserial PRIMARY KEY,
    body       text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- +goose Down
DROP TABLE realtime.rpc_messages;
DROP TABLE realtime.instances;
