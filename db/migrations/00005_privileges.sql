-- Who may publish, and how the sidecar tells its own notifications from
-- forged ones.
--
-- Privileges: the functions of the schema are no longer executable by
-- PUBLIC. The role realtime_publisher (created here when the migrating role
-- may create roles) may call realtime.publish and realtime.broadcast and
-- create row-change triggers with realtime.notify_changes; grant it to the
-- application's roles. The publish functions and the triggers run with the
-- rights of the schema's owner (SECURITY DEFINER with a fixed search_path),
-- so publishers need no rights on the tables of the schema.
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
-- faster than the same expression as an SQL function.
CREATE FUNCTION realtime.sign(channel text, payload text) RETURNS text
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
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
-- the inline limit leaves room for it. Notifications now name their
-- transaction ("x"): Postgres delivers one transaction's notifications
-- together, so a segment still open when another transaction's arrive was
-- never going to be committed by a notification (a replayed one), and the
-- relay drops it instead of holding later broadcasts behind it.
CREATE OR REPLACE FUNCTION realtime.publish_event(topic text, data jsonb, trusted boolean DEFAULT false, data_text text DEFAULT NULL,
                                                  OUT segment bigint, OUT ord integer)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
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

ALTER FUNCTION realtime.publish(text, jsonb) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION realtime.notify_changes() SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

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
            RAISE NOTICE 'role realtime_publisher not created: the migrating role may not create roles. Grant EXECUTE on realtime.publish, realtime.broadcast and realtime.notify_changes, and USAGE on schema realtime, to the publishing roles instead.';
            RETURN;
    END;
    GRANT USAGE ON SCHEMA realtime TO realtime_publisher;
    GRANT EXECUTE ON FUNCTION realtime.publish(text, jsonb), realtime.broadcast(text, jsonb),
                              realtime.notify_changes(), realtime.sanitize(text)
       TO realtime_publisher;
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
