-- Trigger arguments for realtime.notify_changes(): a topic template with
-- per-row placeholders, a list of columns to keep or to drop, and a
-- statement-level form for TRUNCATE. Without arguments a row trigger
-- behaves exactly as before.

-- +goose Up
-- +goose StatementBegin
-- notify_changes publishes each row change as a durable event. Arguments,
-- each "key=value":
--
--   topic=<template>  the topic instead of db.<schema>.<table>; "{col}" is
--                     replaced by the row's value of col (NEW for INSERT and
--                     UPDATE, OLD for DELETE), with characters outside the
--                     topic grammar replaced by "_" and NULL by "_".
--   columns=a,b       only these columns appear in new and old.
--   exclude=a,b       these columns never appear in new and old.
--
-- An invalid argument raises SQLSTATE 22023 naming it when the trigger
-- fires, so the statement that fired it fails. A row whose event would be
-- over the maximum event size is sent with only those primary-key columns
-- that survive columns and exclude, and "truncated": true, so the
-- application's write never fails because of its size. As an AFTER TRUNCATE
-- ... FOR EACH STATEMENT trigger it publishes one event with op TRUNCATE.
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

    PERFORM realtime.publish_event(topic, data, true, data_text);
    RETURN NULL;
END
$$;
-- +goose StatementEnd

-- +goose Down
-- +goose StatementBegin
-- The body of 00001: row triggers only, arguments ignored.
CREATE OR REPLACE FUNCTION realtime.notify_changes() RETURNS trigger
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
