-- Presence: which clients, on any instance, have joined a topic. A row
-- lives while its client is connected and its instance is alive: the
-- sidecar deletes it on leave and on disconnect, and the rows of an
-- instance whose realtime.instances heartbeat is older than 30 seconds are
-- no longer listed and are swept by the other instances. Only the owner,
-- the sidecar's role, reads and writes the table.

-- +goose Up
CREATE TABLE realtime.presence (
    topic     text        NOT NULL,
    client_id text        NOT NULL,
    instance  text        NOT NULL,
    subject   text        NOT NULL,
    info      jsonb,
    joined_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, client_id)
);
CREATE INDEX presence_client ON realtime.presence (client_id);
CREATE INDEX presence_instance ON realtime.presence (instance);
REVOKE ALL ON realtime.presence FROM PUBLIC;

-- History reads the events of one topic.
CREATE INDEX events_topic ON realtime.events (topic);

-- +goose Down
DROP INDEX realtime.events_topic;
DROP TABLE realtime.presence;
