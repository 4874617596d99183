-- Who may publish, and how the sidecar tells its own notifications from
-- forged ones.
--
-- Privileges: the functions of the schema are no longer executable by
-- PUBLIC. The role realtime_publisher (created here when the migrating role
-- may create roles) may call realtime.publish and realtime.broadcast, and
-- write tables whose rows realtime.notify_changes publishes; grant it to
-- the application's roles. The publish functions run with the rights of
-- the schema's owner (SECURITY DEFINER with a fixed search_path), so
-- publishers need no rights on the tables of the schema. They take only
-- topics and JSON, so no code of the caller's runs as the owner.
--
-- Authenticator: any role that can connect may NOTIFY any channel, so a
-- notification on realtime_events or realtime_rpc could be forged to inject
-- an event past the publish rights or to confuse the relay. Every
-- notification the sidecar acts on now starts with 32 hex digits: the first
-- 16 bytes of HMAC-SHA256 over "<channel>:<payload>", keyed with a random
-- key that only the schema's owner can read. The sidecar reads the key at
-- start and drops notifications whose authenticator is wrong. A role that
-- can LISTEN still sees the notifications, and could send one of them again
-- verbatim; docs/security.md describes what such a replay can do.

-- +goose Up
-- The key, stored with its HMAC pads: the inner and outer 64-byte blocks.
CREATE TABLE realtime.notify_key (
    one       boolean PRIMARY KEY DEFAULT true CHECK (one),
    key       bytea NOT NULL,
    inner_pad bytea NOT NULL,
    outer_pad bytea NOT NULL
);
REVOKE ALL ON realtime.notify_key FROM PUBLIC;

-- +goose StatementBegin
DO $$
DECLARE
    -- gen_random_uuid draws from the server's strong random source; three
    -- of them carry 366 random bits, hashed into a 256-bit key.
    k     bytea := sha256(convert_to(gen_random_uuid()::text || gen_random_uuid()::text || gen_random_uuid()::text, 'UTF8'));
    block bytea := k || decode(repeat('00', 32), 'hex');  -- the key, zero-padded to one 64-byte block
    ipad  bytea := block;
    opad  bytea := block;
BEGIN
    FOR i IN 0..63 LOOP
        ipad := set_byte(ipad, i, get_byte(block, i) # 54);  -- 0x36
        opad := set_byte(opad, i, get_byte(block, i) # 92);  -- 0x5c
    END LOOP;
    INSERT INTO realtime.notify_key (key, inner_pad, outer_pad) VALUES (k, ipad, opad);
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
-- sign returns payload prefixed with its authenticator for channel. It is
-- PL/pgSQL because, called once or twice per transaction, it measured
-- faster than the same expression as an SQL function. Only the owner may
-- execute it, directly or from the functions below that run as the owner.
CREATE FUNCTION realtime.sign(channel text, payload text) RETURNS text
LANGUAGE plpgsql STABLE AS $$
DECLARE
    ipad bytea;
    opad bytea;
BEGIN
    SELECT k.inner_pad, k.outer_pad INTO ipad, opad FROM realtime.notify_key k;
    RETURN encode(substr(sha256(opad || sha256(ipad || convert_to(channel || ':' || payload, 'UTF8'))), 1, 16), 'hex')
           || payload;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
-- publish_event as in 00001, with the authenticator on its notification;
-- the inline limit leaves room for it. Only the owner may execute it: the
-- sidecar, and the functions below that run as the owner. Notifications now name their
-- transaction ("x"): Postgres delivers one transaction's notifications
-- together, so a segment still open when another transaction's arrive was
-- never going to be committed by a notification (a replayed one), and the
-- relay drops it instead of holding later broadcasts behind it.
CREATE OR REPLACE FUNCTION realtime.publish_event(topic text, data jsonb, trusted boolean DEFAULT false, data_text text DEFAULT NULL,
                                                  OUT segment bigint, OUT ord integer)
LANGUAGE plpgsql AS $$
DECLARE
    state   text := current_setting('realtime.segment', true);
    max     integer;
    ts      timestamptz := clock_timestamp();
    payload text;
    xact    text;
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
    xact := pg_current_xact_id()::text;

    IF octet_length(data_text) + octet_length(topic) < 7870 THEN
        payload := '{"k":"e","x":' || xact || ',"s":' || segment || ',"o":' || ord
                   || ',"u":' || (extract(epoch FROM ts) * 1000000)::bigint
                   || ',"t":"' || topic || '","d":' || data_text || '}';
    END IF;
    IF payload IS NULL OR octet_length(payload) > 7967 THEN
        -- Too large for one NOTIFY: the sidecar reads the event from the table.
        payload := '{"k":"r","x":' || xact || ',"s":' || segment || ',"o":' || ord || ',"t":"' || topic || '"}';
    END IF;
    PERFORM pg_notify('realtime_events', realtime.sign('realtime_events', payload));

    -- Opening the segment comes last, so that a trigger fired at once
    -- (constraints set IMMEDIATE) already counts this event.
    IF ord = 0 THEN
        INSERT INTO realtime.transactions (segment) VALUES (segment);
    END IF;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
-- assign_ids as in 00001, with the authenticator. It fires at commit, when
-- the current role is the session's again, so it too runs as the owner.
CREATE OR REPLACE FUNCTION realtime.assign_ids() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
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
    PERFORM pg_notify('realtime_events', realtime.sign('realtime_events',
                      json_build_object('k', 'c', 'x', pg_current_xact_id()::text::bigint, 's', NEW.segment, 'f', first, 'n', n,
                                        'e', 'realtime.events'::regclass::oid::bigint)::text));
    RETURN NULL;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
-- broadcast as in 00001, with the authenticator.
CREATE OR REPLACE FUNCTION realtime.broadcast(topic text, data jsonb) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n       integer := coalesce(nullif(current_setting('realtime.broadcast_seq', true), ''), '0')::integer;
    payload text;
BEGIN
    PERFORM realtime.check_topic(topic);
    IF split_part(topic, '.', 1) IN ('db', 'pg', 'presence', 'sys') THEN
        RAISE EXCEPTION 'cannot broadcast on %: the namespace %. is reserved for events the sidecar produces', topic, split_part(topic, '.', 1)
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'Broadcast on a topic outside db., pg., presence. and sys.';
    END IF;
    -- The sequence number keeps two identical broadcasts of one transaction
    -- apart, since Postgres folds identical notifications into one.
    payload := '{"k":"b","x":' || coalesce(pg_current_xact_id_if_assigned()::text, '0')
               || ',"n":' || n || ',"u":' || (extract(epoch FROM clock_timestamp()) * 1000000)::bigint
               || ',"t":"' || topic || '","d":' || coalesce(data, 'null'::jsonb)::text || '}';
    IF octet_length(payload) > 7967 THEN
        RAISE EXCEPTION 'ephemeral event for topic % is % bytes as a NOTIFY payload, over the limit of 7967 bytes', topic, octet_length(payload)
            USING ERRCODE = 'program_limit_exceeded',
                  HINT = 'Use realtime.publish, which has no such limit, or send less data.';
    END IF;
    PERFORM set_config('realtime.broadcast_seq', (n + 1)::text, true);
    PERFORM pg_notify('realtime_events', realtime.sign('realtime_events', payload));
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
-- publish as in 00001, run as the owner, refusing the reserved namespaces:
-- their events come from the sidecar, from row-change triggers (db.) and
-- from the application's API keys.
CREATE OR REPLACE FUNCTION realtime.publish(topic text, data jsonb) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ns text := split_part(topic, '.', 1);
BEGIN
    IF ns IN ('db', 'pg', 'presence', 'sys') THEN
        RAISE EXCEPTION 'cannot publish on %: the namespace %. is reserved for events the sidecar produces', topic, ns
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'Publish on a topic outside db., pg., presence. and sys., or through the HTTP API with an API key.';
    END IF;
    PERFORM realtime.publish_event(topic, data);
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
-- publish_change publishes a row-change event for realtime.notify_changes,
-- which runs as the role that changed the row: it allows db. but no other
-- reserved namespace, and checks the topic and size like publish.
--
-- notify_changes itself must not run as the owner: turning a row into JSON
-- calls the casts to json of the row's column types, and a role that owns
-- a type can make that cast run any code.
CREATE FUNCTION realtime.publish_change(topic text, data jsonb) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ns text := split_part(topic, '.', 1);
BEGIN
    IF ns IN ('pg', 'presence', 'sys') THEN
        RAISE EXCEPTION 'cannot publish a row change on %: the namespace %. is reserved for the sidecar (only db. is allowed)', topic, ns
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    PERFORM realtime.publish_event(topic, data);
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
-- notify_changes as in 00004, publishing through publish_change.
CREATE OR REPLACE FUNCTION realtime.notify_changes() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    topic        text := 'db.' || realtime.sanitize(TG_TABLE_SCHEMA) || '.' || realtime.sanitize(TG_TABLE_NAME);
    template     text;
    keep_cols    text[];
    drop_cols    text[];
    placeholders text[];
    names        text[];
    arg          text;
    arg_key      text;
    arg_value    text;
    col          text;
    value        text;
    row_columns  jsonb;
    topic_row    jsonb;
    new_row      jsonb;
    old_row      jsonb;
    data         jsonb;
    max          integer;
    data_text    text;
    key_cols     text[];
BEGIN
    IF TG_WHEN <> 'AFTER' OR (TG_LEVEL = 'STATEMENT' AND TG_OP <> 'TRUNCATE') THEN
        RAISE EXCEPTION 'realtime.notify_changes() must be an AFTER ... FOR EACH ROW trigger, or AFTER TRUNCATE ... FOR EACH STATEMENT (table %.%)', TG_TABLE_SCHEMA, TG_TABLE_NAME;
    END IF;

    -- Parse the arguments. Each firing parses them again, because PL/pgSQL
    -- has no per-trigger state; a trigger without arguments skips this.
    FOR i IN 0 .. TG_NARGS - 1 LOOP
        arg := TG_ARGV[i];
        IF position('=' IN arg) = 0 THEN
            RAISE EXCEPTION 'realtime.notify_changes() on %.%: invalid trigger argument %: want key=value with key topic, columns or exclude', TG_TABLE_SCHEMA, TG_TABLE_NAME, quote_literal(arg)
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        arg_key := btrim(left(arg, position('=' IN arg) - 1));
        arg_value := substr(arg, position('=' IN arg) + 1);

        IF arg_key IN ('columns', 'exclude') THEN
            SELECT array_agg(btrim(c)) INTO names FROM unnest(string_to_array(arg_value, ',')) c;
            IF names IS NULL OR '' = ANY (names) THEN
                RAISE EXCEPTION 'realtime.notify_changes() on %.%: invalid trigger argument %: want a comma-separated list of column names', TG_TABLE_SCHEMA, TG_TABLE_NAME, quote_literal(arg)
                    USING ERRCODE = 'invalid_parameter_value';
            END IF;
        END IF;

        IF (arg_key = 'topic' AND template IS NOT NULL) OR (arg_key = 'columns' AND keep_cols IS NOT NULL)
           OR (arg_key = 'exclude' AND drop_cols IS NOT NULL) THEN
            RAISE EXCEPTION 'realtime.notify_changes() on %.%: invalid trigger argument %: % is given twice', TG_TABLE_SCHEMA, TG_TABLE_NAME, quote_literal(arg), arg_key
                USING ERRCODE = 'invalid_parameter_value';
        END IF;

        CASE arg_key
        WHEN 'topic' THEN
            template := arg_value;
        WHEN 'columns' THEN
            keep_cols := names;
        WHEN 'exclude' THEN
            drop_cols := names;
        ELSE
            RAISE EXCEPTION 'realtime.notify_changes() on %.%: invalid trigger argument %: unknown key %, want topic, columns or exclude', TG_TABLE_SCHEMA, TG_TABLE_NAME, quote_literal(arg), quote_literal(arg_key)
                USING ERRCODE = 'invalid_parameter_value';
        END CASE;
    END LOOP;

    IF TG_OP = 'INSERT' OR TG_OP = 'UPDATE' THEN
        new_row := to_jsonb(NEW);
    END IF;
    IF TG_OP = 'UPDATE' OR TG_OP = 'DELETE' THEN
        old_row := to_jsonb(OLD);
    END IF;

    IF TG_NARGS > 0 THEN
        -- The table's column names as the keys of a JSON object: the row
        -- itself, or the catalog for TRUNCATE, which has no row.
        row_columns := coalesce(new_row, old_row);
        IF row_columns IS NULL THEN
            SELECT jsonb_object_agg(a.attname, 'null'::jsonb) INTO row_columns
              FROM pg_attribute a
             WHERE a.attrelid = TG_RELID AND a.attnum > 0 AND NOT a.attisdropped;
        END IF;
        FOREACH col IN ARRAY coalesce(keep_cols, '{}') || coalesce(drop_cols, '{}') LOOP
            IF NOT row_columns ? col THEN
                RAISE EXCEPTION 'realtime.notify_changes() on %.%: invalid trigger argument columns or exclude: table has no column %', TG_TABLE_SCHEMA, TG_TABLE_NAME, quote_ident(col)
                    USING ERRCODE = 'invalid_parameter_value';
            END IF;
        END LOOP;
    END IF;

    IF template IS NOT NULL THEN
        SELECT array_agg(DISTINCT m[1]) INTO placeholders FROM regexp_matches(template, '\{([^{}]*)\}', 'g') m;
        IF placeholders IS NOT NULL AND TG_OP = 'TRUNCATE' THEN
            RAISE EXCEPTION 'realtime.notify_changes() on %.%: invalid trigger argument topic=%: a TRUNCATE trigger has no row for placeholders', TG_TABLE_SCHEMA, TG_TABLE_NAME, template
                USING ERRCODE = 'invalid_parameter_value';
        END IF;

        topic := template;
        topic_row := coalesce(new_row, old_row);
        FOREACH col IN ARRAY coalesce(placeholders, '{}') LOOP
            IF NOT topic_row ? col THEN
                RAISE EXCEPTION 'realtime.notify_changes() on %.%: invalid trigger argument topic=%: table has no column %', TG_TABLE_SCHEMA, TG_TABLE_NAME, template, quote_ident(col)
                    USING ERRCODE = 'invalid_parameter_value';
            END IF;
            value := coalesce(realtime.sanitize(topic_row ->> col), '_');
            -- A long value would make the topic too long and the write
            -- fail; its MD5 in hex keeps one topic per value instead.
            IF octet_length(value) > 64 THEN
                value := md5(topic_row ->> col);
            END IF;
            topic := replace(topic, '{' || col || '}', value);
        END LOOP;

        -- The same grammar as realtime.check_topic, checked here so that the
        -- message names the trigger argument.
        IF octet_length(topic) > 255 OR topic !~ '^[A-Za-z0-9_:/-]+(\.[A-Za-z0-9_:/-]+)*$' THEN
            RAISE EXCEPTION 'realtime.notify_changes() on %.%: invalid trigger argument topic=%: it gives %, which is not a valid topic (1 to 255 bytes of segments separated by ".", each made of A-Z a-z 0-9 _ - : /)', TG_TABLE_SCHEMA, TG_TABLE_NAME, template, quote_literal(topic)
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF split_part(topic, '.', 1) IN ('pg', 'presence', 'sys') THEN
            RAISE EXCEPTION 'realtime.notify_changes() on %.%: invalid trigger argument topic=%: it gives %, in a namespace reserved for the sidecar (only db. is allowed)', TG_TABLE_SCHEMA, TG_TABLE_NAME, template, quote_literal(topic)
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
    END IF;

    IF keep_cols IS NOT NULL THEN
        new_row := new_row - ARRAY(SELECT k FROM jsonb_object_keys(new_row) k WHERE k <> ALL (keep_cols));
        old_row := old_row - ARRAY(SELECT k FROM jsonb_object_keys(old_row) k WHERE k <> ALL (keep_cols));
    END IF;
    IF drop_cols IS NOT NULL THEN
        new_row := new_row - drop_cols;
        old_row := old_row - drop_cols;
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
        -- new_row and old_row are already filtered, so key columns that
        -- columns or exclude removed stay out.
        data := jsonb_build_object('op', TG_OP, 'schema', TG_TABLE_SCHEMA, 'table', TG_TABLE_NAME,
                                   'new', CASE WHEN new_row IS NULL THEN NULL
                                               ELSE (SELECT coalesce(jsonb_object_agg(k, new_row -> k), '{}') FROM unnest(key_cols) k WHERE new_row ? k) END,
                                   'old', CASE WHEN old_row IS NULL THEN NULL
                                               ELSE (SELECT coalesce(jsonb_object_agg(k, old_row -> k), '{}') FROM unnest(key_cols) k WHERE old_row ? k) END,
                                   'truncated', true);
        IF octet_length(data::text) > max THEN
            -- Even the key is too large: send the operation alone.
            data := jsonb_build_object('op', TG_OP, 'schema', TG_TABLE_SCHEMA, 'table', TG_TABLE_NAME,
                                       'new', NULL, 'old', NULL, 'truncated', true);
        END IF;
        data_text := data::text;
    END IF;

    PERFORM realtime.publish_change(topic, data);
    RETURN NULL;
END
$$;
-- +goose StatementEnd

REVOKE ALL ON ALL FUNCTIONS IN SCHEMA realtime FROM PUBLIC;

-- +goose StatementBegin
DO $$
BEGIN
    BEGIN
        CREATE ROLE realtime_publisher NOLOGIN;
    EXCEPTION
        WHEN duplicate_object OR unique_violation THEN
            NULL; -- made by another database of the cluster, or concurrently
        WHEN insufficient_privilege THEN
            RAISE NOTICE 'role realtime_publisher not created: the migrating role may not create roles. Grant USAGE on schema realtime, EXECUTE on realtime.publish, realtime.broadcast, realtime.notify_changes, realtime.publish_change and realtime.sanitize, and SELECT (max_event_bytes) on realtime.settings to the publishing roles instead.';
            RETURN;
    END;
    GRANT USAGE ON SCHEMA realtime TO realtime_publisher;
    GRANT EXECUTE ON FUNCTION realtime.publish(text, jsonb), realtime.broadcast(text, jsonb),
                              realtime.notify_changes(), realtime.publish_change(text, jsonb),
                              realtime.sanitize(text), realtime.epoch()
       TO realtime_publisher;
    -- notify_changes reads the maximum event size as the writing role.
    GRANT SELECT (max_event_bytes) ON realtime.settings TO realtime_publisher;
END
$$;
-- +goose StatementEnd

-- +goose Down
-- Down keeps the privileges and turns the authenticator off: sign returns
-- the payload as it is, which is what sidecars before this version read.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION realtime.sign(channel text, payload text) RETURNS text
LANGUAGE plpgsql IMMUTABLE AS $$ BEGIN RETURN payload; END $$;
-- +goose StatementEnd
DROP TABLE realtime.notify_key;
