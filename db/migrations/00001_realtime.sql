-- The durable event log, the publish functions and the row-change trigger.
--
-- How ids follow commit order:
--
-- A transaction's first publish opens a "segment": it takes a key from
-- realtime.segment_seq, inserts one row into realtime.transactions, and
-- counts its events in the transaction-local setting realtime.segment
-- ("key:count"). Each event row carries (segment, ord) and no id yet.
--
-- The insert into realtime.transactions queues a deferred constraint
-- trigger, which Postgres fires during commit, after the application's own
-- statements. It takes a transaction-scoped advisory lock, reserves
-- count ids from realtime.event_id_seq, stores them in the segment's row,
-- and sends the commit notification. The event with ordinal ord gets id
-- first_id + ord.
--
-- Postgres releases transaction locks after the commit has become visible
-- to other sessions. So when a transaction takes the lock, every
-- transaction that took it before has committed (or aborted, which leaves a
-- gap), and any snapshot that sees an id also sees every smaller id that
-- was ever committed. A reader that resumes after id N therefore receives
-- exactly the events it has not seen. The lock is held only from the
-- trigger to the end of the commit: publishing takes no lock that another
-- transaction waits for before it commits.
--
-- The setting follows savepoints: ROLLBACK TO SAVEPOINT restores the count
-- together with the rows, so ordinals stay dense. If the trigger fires before
-- the transaction ends (SET CONSTRAINTS ALL IMMEDIATE, or a deferred trigger
-- of the application that publishes after the sidecar's fired), the segment
-- is sealed and the next publish opens a new one, whose ids come later.

-- +goose Up
CREATE SCHEMA IF NOT EXISTS realtime;

-- One row: limits the sidecar stores at start, the retention point, and a
-- random identity that becomes part of the epoch.
CREATE TABLE realtime.settings (
    singleton       boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    max_event_bytes integer NOT NULL DEFAULT 1048576 CHECK (max_event_bytes > 0),
    -- Events with ids at or below purged_through may have been deleted.
    purged_through  bigint  NOT NULL DEFAULT 0,
    identity        text    NOT NULL DEFAULT md5(random()::text || clock_timestamp()::text)
);
INSERT INTO realtime.settings DEFAULT VALUES;

CREATE SEQUENCE realtime.segment_seq AS bigint;
CREATE SEQUENCE realtime.event_id_seq AS bigint;

-- One row per publishing transaction (per segment). first_id and last_id
-- are null until the commit trigger fills them in, so other sessions never
-- see a row without them.
CREATE TABLE realtime.transactions (
    segment      bigint PRIMARY KEY,
    first_id     bigint,
    last_id      bigint,
    committed_at timestamptz
);
CREATE INDEX transactions_last_id ON realtime.transactions (last_id);

CREATE TABLE realtime.events (
    segment bigint      NOT NULL,
    ord     integer     NOT NULL,
    topic   text        NOT NULL,
    data    jsonb       NOT NULL,
    ts      timestamptz NOT NULL,
    PRIMARY KEY (segment, ord)
);

-- +goose StatementBegin
CREATE FUNCTION realtime.check_topic(topic text) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF topic IS NULL OR octet_length(topic) > 255
       OR topic !~ '^[A-Za-z0-9_:/-]+(\.[A-Za-z0-9_:/-]+)*$' THEN
        RAISE EXCEPTION 'invalid topic %: a topic is 1 to 255 bytes of segments separated by ".", each made of A-Z a-z 0-9 _ - : /', quote_nullable(topic)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
-- publish_event stores one durable event and returns where it sits in its
-- segment; the sidecar uses the pair to learn the event's id after commit.
-- trusted is true only for the row-change trigger, whose topic is valid by
-- construction and whose data already fits; it passes the data's text too,
-- so that the JSON is rendered once.
--
-- The notification carries the event when it fits in one NOTIFY, with ts
-- as microseconds since 1970 ("u"); topics need no JSON escaping because
-- the grammar has no character that JSON escapes.
CREATE FUNCTION realtime.publish_event(topic text, data jsonb, trusted boolean DEFAULT false, data_text text DEFAULT NULL,
                                       OUT segment bigint, OUT ord integer)
LANGUAGE plpgsql AS $$
DECLARE
    state   text := current_setting('realtime.segment', true);
    max     integer;
    ts      timestamptz := clock_timestamp();
    payload text;
BEGIN
    IF data IS NULL THEN
        data := 'null'::jsonb;
        data_text := 'null';
    END IF;
    IF data_text IS NULL THEN
        data_text := data::text;
    END IF;
    IF NOT trusted THEN
        PERFORM realtime.check_topic(topic);
        SELECT s.max_event_bytes INTO max FROM realtime.settings s;
        IF octet_length(data_text) > max THEN
            RAISE EXCEPTION 'event data for topic % is % bytes, over the maximum event size of % bytes', topic, octet_length(data_text), max
                USING ERRCODE = 'program_limit_exceeded',
                      HINT = 'Publish a smaller event or raise the sidecar''s --max-event-bytes.';
        END IF;
    END IF;

    IF state IS NULL OR state = '' THEN
        segment := nextval('realtime.segment_seq');
        ord := 0;
    ELSE
        segment := split_part(state, ':', 1)::bigint;
        ord := split_part(state, ':', 2)::integer;
    END IF;

    INSERT INTO realtime.events (segment, ord, topic, data, ts)
    VALUES (segment, ord, topic, data, ts);
    PERFORM set_config('realtime.segment', segment || ':' || (ord + 1), true);

    IF octet_length(data_text) + octet_length(topic) < 7900 THEN
        payload := '{"k":"e","s":' || segment || ',"o":' || ord
                   || ',"u":' || (extract(epoch FROM ts) * 1000000)::bigint
                   || ',"t":"' || topic || '","d":' || data_text || '}';
    END IF;
    IF payload IS NULL OR octet_length(payload) > 7999 THEN
        -- Too large for one NOTIFY: the sidecar reads the event from the table.
        payload := '{"k":"r","s":' || segment || ',"o":' || ord || ',"t":"' || topic || '"}';
    END IF;
    PERFORM pg_notify('realtime_events', payload);

    -- Opening the segment comes last, so that a trigger fired at once
    -- (constraints set IMMEDIATE) already counts this event.
    IF ord = 0 THEN
        INSERT INTO realtime.transactions (segment) VALUES (segment);
    END IF;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE FUNCTION realtime.publish(topic text, data jsonb) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM realtime.publish_event(topic, data);
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE FUNCTION realtime.assign_ids() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    state text := current_setting('realtime.segment', true);
    n     integer;
    first bigint;
BEGIN
    IF state IS NOT NULL AND split_part(state, ':', 1) = NEW.segment::text THEN
        n := split_part(state, ':', 2)::integer;
    ELSE
        SELECT count(*) INTO n FROM realtime.events e WHERE e.segment = NEW.segment;
    END IF;

    -- 8247266748302303521 is the sidecar's id lock ("rt-ids!!").
    PERFORM pg_advisory_xact_lock(8247266748302303521);
    first := nextval('realtime.event_id_seq');
    IF n > 1 THEN
        PERFORM setval('realtime.event_id_seq', first + n - 1);
    END IF;

    UPDATE realtime.transactions
       SET first_id = first, last_id = first + greatest(n, 1) - 1, committed_at = clock_timestamp()
     WHERE segment = NEW.segment;
    PERFORM set_config('realtime.segment', '', true);
    -- "e" identifies the events table: a new table starts a new id space,
    -- and the sidecar must not mistake its ids for ones it has delivered.
    PERFORM pg_notify('realtime_events',
                      json_build_object('k', 'c', 's', NEW.segment, 'f', first, 'n', n,
                                        'e', 'realtime.events'::regclass::oid::bigint)::text);
    RETURN NULL;
END
$$;
-- +goose StatementEnd

CREATE CONSTRAINT TRIGGER assign_ids
    AFTER INSERT ON realtime.transactions
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION realtime.assign_ids();

-- +goose StatementBegin
CREATE FUNCTION realtime.broadcast(topic text, data jsonb) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    n       integer := coalesce(nullif(current_setting('realtime.broadcast_seq', true), ''), '0')::integer;
    payload text;
BEGIN
    PERFORM realtime.check_topic(topic);
    -- The sequence number keeps two identical broadcasts of one transaction
    -- apart, since Postgres folds identical notifications into one.
    payload := '{"k":"b","n":' || n || ',"u":' || (extract(epoch FROM clock_timestamp()) * 1000000)::bigint
               || ',"t":"' || topic || '","d":' || coalesce(data, 'null'::jsonb)::text || '}';
    IF octet_length(payload) > 7999 THEN
        RAISE EXCEPTION 'ephemeral event for topic % is % bytes as a NOTIFY payload, over the limit of 7999 bytes', topic, octet_length(payload)
            USING ERRCODE = 'program_limit_exceeded',
                  HINT = 'Use realtime.publish, which has no such limit, or send less data.';
    END IF;
    PERFORM set_config('realtime.broadcast_seq', (n + 1)::text, true);
    PERFORM pg_notify('realtime_events', payload);
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE FUNCTION realtime.sanitize(name text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN name = '' THEN '_' ELSE regexp_replace(name, '[^A-Za-z0-9_:/-]', '_', 'g') END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
-- notify_changes publishes each row change as a durable event on
-- db.<schema>.<table>. A row whose event would be over the maximum event
-- size is sent with only its primary-key columns and "truncated": true, so
-- the application's write never fails because of its size.
CREATE FUNCTION realtime.notify_changes() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    topic     text := 'db.' || realtime.sanitize(TG_TABLE_SCHEMA) || '.' || realtime.sanitize(TG_TABLE_NAME);
    new_row   jsonb;
    old_row   jsonb;
    data      jsonb;
    max       integer;
    data_text text;
    key_cols  text[];
BEGIN
    IF TG_LEVEL <> 'ROW' OR TG_WHEN <> 'AFTER' THEN
        RAISE EXCEPTION 'realtime.notify_changes() must be an AFTER ... FOR EACH ROW trigger (table %.%)', TG_TABLE_SCHEMA, TG_TABLE_NAME;
    END IF;
    IF TG_OP <> 'DELETE' THEN
        new_row := to_jsonb(NEW);
    END IF;
    IF TG_OP <> 'INSERT' THEN
        old_row := to_jsonb(OLD);
    END IF;
    data := jsonb_build_object('op', TG_OP, 'schema', TG_TABLE_SCHEMA, 'table', TG_TABLE_NAME,
                               'new', new_row, 'old', old_row);

    SELECT s.max_event_bytes INTO max FROM realtime.settings s;
    data_text := data::text;
    IF octet_length(data_text) > max THEN
        SELECT array_agg(a.attname::text ORDER BY a.attnum) INTO key_cols
          FROM pg_index i
          JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
         WHERE i.indrelid = TG_RELID AND i.indisprimary;
        data := jsonb_build_object('op', TG_OP, 'schema', TG_TABLE_SCHEMA, 'table', TG_TABLE_NAME,
                                   'new', CASE WHEN new_row IS NULL THEN NULL
                                               ELSE (SELECT coalesce(jsonb_object_agg(k, new_row -> k), '{}') FROM unnest(key_cols) k) END,
                                   'old', CASE WHEN old_row IS NULL THEN NULL
                                               ELSE (SELECT coalesce(jsonb_object_agg(k, old_row -> k), '{}') FROM unnest(key_cols) k) END,
                                   'truncated', true);
        IF octet_length(data::text) > max THEN
            -- Even the key is too large: send the operation alone.
            data := jsonb_build_object('op', TG_OP, 'schema', TG_TABLE_SCHEMA, 'table', TG_TABLE_NAME,
                                       'new', NULL, 'old', NULL, 'truncated', true);
        END IF;
        data_text := data::text;
    END IF;

    PERFORM realtime.publish_event(topic, data, true, data_text);
    RETURN NULL;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
-- epoch names the id space of realtime.events. It changes when the cluster
-- changes (system identifier), when a standby is promoted or a backup is
-- restored with recovery (timeline), and when the schema is recreated
-- (database and table identity, and a random identity stored at creation).
CREATE FUNCTION realtime.epoch() RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT substr(md5(concat_ws(':',
               (SELECT system_identifier FROM pg_control_system()),
               CASE WHEN pg_is_in_recovery()
                    THEN (SELECT timeline_id::text FROM pg_control_checkpoint())
                    ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::integer::text END,
               (SELECT oid FROM pg_database WHERE datname = current_database()),
               'realtime.events'::regclass::oid,
               (SELECT identity FROM realtime.settings))), 1, 16)
$$;
-- +goose StatementEnd

-- +goose StatementBegin
-- purge deletes up to batch of the oldest transactions committed before
-- cutoff, with their events, and moves purged_through past them. It skips
-- rows another sidecar is purging at the same moment.
CREATE FUNCTION realtime.purge(cutoff timestamptz, batch integer) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    upto    bigint;
    deleted integer;
BEGIN
    WITH doomed AS (
        SELECT t.segment, t.last_id
          FROM realtime.transactions t
         WHERE t.last_id IS NOT NULL AND t.committed_at < cutoff
         ORDER BY t.last_id
         LIMIT batch
           FOR UPDATE SKIP LOCKED
    ), gone_events AS (
        DELETE FROM realtime.events e USING doomed d WHERE e.segment = d.segment
    ), gone AS (
        DELETE FROM realtime.transactions t USING doomed d WHERE t.segment = d.segment
        RETURNING d.last_id
    )
    SELECT max(last_id), count(*) INTO upto, deleted FROM gone;

    IF upto IS NOT NULL THEN
        UPDATE realtime.settings SET purged_through = greatest(purged_through, upto);
    END IF;
    RETURN deleted;
END
$$;
-- +goose StatementEnd

-- +goose Down
DROP FUNCTION realtime.purge(timestamptz, integer);
DROP FUNCTION realtime.epoch();
DROP FUNCTION realtime.notify_changes() CASCADE;
DROP FUNCTION realtime.sanitize(text);
DROP FUNCTION realtime.broadcast(text, jsonb);
DROP TABLE realtime.events;
DROP TABLE realtime.transactions;
DROP FUNCTION realtime.assign_ids();
DROP FUNCTION realtime.publish(text, jsonb);
DROP FUNCTION realtime.publish_event(text, jsonb, boolean, text);
DROP FUNCTION realtime.check_topic(text);
DROP SEQUENCE realtime.event_id_seq;
DROP SEQUENCE realtime.segment_seq;
DROP TABLE realtime.settings;
