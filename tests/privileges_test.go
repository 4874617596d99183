package tests

import (
	"context"
	"errors"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgsidecar/sidecar/tests/pgtest"
)

// newRole creates a login role with a unique name, granted the given roles,
// and returns a URL of dbURL that connects as it, and its name. The test's
// cleanup drops the role.
func newRole(t *testing.T, dbURL, prefix string, grants ...string) (string, string) {
	t.Helper()
	name := prefix + "_" + strings.ToLower(strings.ReplaceAll(t.Name(), "/", "_"))
	if len(name) > 60 {
		name = name[:60]
	}
	admin := connect(t, dbURL)
	exec(t, admin, `CREATE ROLE "`+name+`" LOGIN PASSWORD 'role-password'`)
	for _, g := range grants {
		exec(t, admin, `GRANT `+g+` TO "`+name+`"`)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitLong)
		defer cancel()
		c := connect(t, dbURL)
		defer c.Close(ctx)
		// What the role owns goes to the admin or away first; then the role.
		_, _ = c.Exec(ctx, `REASSIGN OWNED BY "`+name+`" TO CURRENT_USER`)
		_, _ = c.Exec(ctx, `DROP OWNED BY "`+name+`"`)
		_, _ = c.Exec(ctx, `DROP ROLE "`+name+`"`)
	})

	u, err := url.Parse(dbURL)
	if err != nil {
		t.Fatalf("parse database URL: %v", err)
	}
	u.User = url.UserPassword(name, "role-password")
	return u.String(), name
}

// sqlState returns the SQLSTATE of a Postgres error, or "".
func sqlState(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	return ""
}

func TestForgedNotificationsAreDropped(t *testing.T) {
	db := pgtest.NewDatabase(t)
	sc := startSidecar(t, db)
	sub := subscribe(t, dial(t, sc), []string{"users.>"})
	intruderURL, _ := newRole(t, db, "intruder")
	intruder := connect(t, intruderURL)

	forged := []string{
		`{"k":"b","n":0,"u":1,"t":"users.forged","d":{"admin":true}}`,
		`{"k":"e","s":1,"o":0,"u":1,"t":"users.forged","d":1}`,
		`{"k":"c","s":1,"f":1,"n":1,"e":1}`,
		`00000000000000000000000000000000{"k":"b","n":0,"u":1,"t":"users.forged","d":2}`,
		`ffffffffffffffffffffffffffffffff{"k":"b","n":0,"u":1,"t":"users.forged","d":3}`,
		`zz`,
	}
	for _, payload := range forged {
		exec(t, intruder, `SELECT pg_notify('realtime_events', $1)`, payload)
		exec(t, intruder, `SELECT pg_notify('realtime_rpc', $1)`, payload)
	}

	// A real event after the forged ones arrives, and it is the first.
	postJSON(t, sc, "/v1/publish", testAPIKey, map[string]any{"topic": "users.real", "data": 1})
	if ev := next(t, sub); ev.Topic != "users.real" {
		t.Fatalf("first event = %s %s, want users.real: a forged notification was delivered", ev.Topic, ev.Data)
	}
	expectQuiet(t, sub, 300*time.Millisecond)

	if code, body := sc.readyz(t); code != 200 {
		t.Fatalf("readyz after forged notifications = %d %v, want 200", code, body)
	}
}

func TestPublishPrivileges(t *testing.T) {
	db := pgtest.NewDatabase(t)
	sc := startSidecar(t, db)
	sub := subscribe(t, dial(t, sc), []string{"priv.>", "db.>"})
	ctx := context.Background()

	intruderURL, _ := newRole(t, db, "intruder")
	intruder := connect(t, intruderURL)
	denied := []string{
		`SELECT realtime.publish('priv.x', '1')`,
		`SELECT realtime.broadcast('priv.x', '1')`,
		`SELECT realtime.publish_event('priv.x', '1', true)`,
		`SELECT realtime.sign('realtime_events', '{}')`,
		`SELECT realtime.purge(now(), 1000)`,
		`SELECT key FROM realtime.notify_key`,
		`INSERT INTO realtime.events (segment, ord, topic, data, ts) VALUES (1, 0, 'priv.x', '1', now())`,
	}
	for _, q := range denied {
		if _, err := intruder.Exec(ctx, q); sqlState(err) != "42501" {
			t.Errorf("as a role without grants, %s = %v, want permission denied (42501)", q, err)
		}
	}

	appURL, appName := newRole(t, db, "app", "realtime_publisher")
	exec(t, connect(t, db), `GRANT CREATE ON SCHEMA public TO "`+appName+`"`)
	app := connect(t, appURL)
	exec(t, app, `SELECT realtime.publish('priv.durable', '{"n": 1}')`)
	exec(t, app, `SELECT realtime.broadcast('priv.ephemeral', '{"n": 2}')`)
	exec(t, app, `CREATE TABLE public.notes (id int PRIMARY KEY, body text)`)
	exec(t, app, `CREATE TRIGGER notes_changes AFTER INSERT OR UPDATE OR DELETE ON public.notes
	              FOR EACH ROW EXECUTE FUNCTION realtime.notify_changes()`)
	exec(t, app, `INSERT INTO public.notes VALUES (1, 'hello')`)

	for _, want := range []string{"priv.durable", "priv.ephemeral", "db.public.notes"} {
		if ev := next(t, sub); ev.Topic != want {
			t.Fatalf("event = %s, want %s", ev.Topic, want)
		}
	}
	for _, q := range []string{
		`SELECT realtime.publish_event('priv.x', '1', true)`,
		`SELECT realtime.sign('realtime_events', '{}')`,
		`SELECT key FROM realtime.notify_key`,
		`SELECT realtime.publish('sys.admin', '1')`,
		`SELECT realtime.publish('db.public.users', '1')`,
		`SELECT realtime.broadcast('presence.room', '1')`,
		`SELECT realtime.publish_change('sys.admin', '1')`,
	} {
		if _, err := app.Exec(ctx, q); sqlState(err) != "42501" {
			t.Errorf("as realtime_publisher, %s = %v, want 42501", q, err)
		}
	}

	// Writing a table with the trigger publishes, so it needs the role too.
	writerURL, writerName := newRole(t, db, "writer")
	writer := connect(t, writerURL)
	exec(t, app, `GRANT INSERT ON public.notes TO "`+writerName+`"`)
	if _, err := writer.Exec(ctx, `INSERT INTO public.notes VALUES (2, 'no grant')`); sqlState(err) != "42501" {
		t.Fatalf("insert by a writer without realtime_publisher = %v, want 42501", err)
	}
	exec(t, connect(t, db), `GRANT realtime_publisher TO "`+writerName+`"`)
	exec(t, writer, `INSERT INTO public.notes VALUES (3, 'from a writer')`)
	if ev := next(t, sub); ev.Topic != "db.public.notes" || !strings.Contains(string(ev.Data), "from a writer") {
		t.Fatalf("event = %s %s, want db.public.notes from the writer", ev.Topic, ev.Data)
	}
	expectQuiet(t, sub, 300*time.Millisecond)
}

// Turning a row into JSON runs the casts to json of its column types, and
// a role that owns a type decides what its cast runs. The trigger must run
// it as that role, never as the schema's owner.
func TestRowChangeRunsCastsAsTheWriter(t *testing.T) {
	db := pgtest.NewDatabase(t)
	sc := startSidecar(t, db)
	sub := subscribe(t, dial(t, sc), []string{"db.>"})

	appURL, appName := newRole(t, db, "app", "realtime_publisher")
	exec(t, connect(t, db), `GRANT CREATE ON SCHEMA public TO "`+appName+`"`)
	app := connect(t, appURL)
	exec(t, app, `CREATE TABLE public.cast_calls (caller text)`)
	exec(t, app, `CREATE TYPE public.mood AS ENUM ('calm')`)
	exec(t, app, `CREATE FUNCTION public.mood_json(public.mood) RETURNS json LANGUAGE plpgsql AS $$
	              BEGIN
	                  INSERT INTO public.cast_calls VALUES (current_user);
	                  RETURN to_json($1::text);
	              END $$`)
	exec(t, app, `CREATE CAST (public.mood AS json) WITH FUNCTION public.mood_json(public.mood)`)
	exec(t, app, `CREATE TABLE public.moods (id int PRIMARY KEY, m public.mood)`)
	exec(t, app, `CREATE TRIGGER moods_changes AFTER INSERT ON public.moods
	              FOR EACH ROW EXECUTE FUNCTION realtime.notify_changes()`)
	exec(t, app, `INSERT INTO public.moods VALUES (1, 'calm')`)

	if ev := next(t, sub); ev.Topic != "db.public.moods" {
		t.Fatalf("event = %s, want db.public.moods", ev.Topic)
	}
	var caller string
	if err := app.QueryRow(context.Background(), `SELECT string_agg(DISTINCT caller, ',') FROM public.cast_calls`).Scan(&caller); err != nil {
		t.Fatal(err)
	}
	if caller != appName {
		t.Fatalf("the cast ran as %q, want only the writing role %q", caller, appName)
	}
}

// The sidecar's own role needs no superuser rights: owning the database it
// migrates is enough, and a role that may not create roles still migrates.
func TestSidecarRunsAsDatabaseOwner(t *testing.T) {
	empty := emptyDatabase(t)
	ownerURL, owner := newRole(t, empty, "owner")
	admin := connect(t, empty)
	dbName := strings.TrimPrefix(mustParseURL(t, empty).Path, "/")
	exec(t, admin, `ALTER DATABASE `+dbName+` OWNER TO "`+owner+`"`)
	exec(t, admin, `ALTER SCHEMA public OWNER TO "`+owner+`"`)

	sc := startSidecar(t, ownerURL)
	sub := subscribe(t, dial(t, sc), []string{"owner.>"})
	exec(t, connect(t, ownerURL), `SELECT realtime.publish('owner.sql', '1')`)
	postJSON(t, sc, "/v1/publish", testAPIKey, map[string]any{"topic": "owner.http", "data": 2})
	for _, want := range []string{"owner.sql", "owner.http"} {
		if ev := next(t, sub); ev.Topic != want {
			t.Fatalf("event = %s, want %s", ev.Topic, want)
		}
	}
	if code, body := sc.readyz(t); code != 200 || body["epoch"] == "" {
		t.Fatalf("readyz = %d %v, want 200 with an epoch", code, body)
	}
}

func mustParseURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}
