package tests

import (
	"context"
	"crypto/md5"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgsidecar/sidecar/tests/pgtest"
)

// storedEvent is one row of realtime.events.
type storedEvent struct {
	Topic string
	Data  rowChange
}

// storedEvents returns every event in realtime.events in publish order.
func storedEvents(t testing.TB, conn *pgx.Conn) []storedEvent {
	t.Helper()
	rows, err := conn.Query(context.Background(), `SELECT topic, data::text FROM realtime.events ORDER BY segment, ord`)
	if err != nil {
		t.Fatalf("read realtime.events: %v", err)
	}
	var out []storedEvent
	for rows.Next() {
		var topic, data string
		if err := rows.Scan(&topic, &data); err != nil {
			t.Fatalf("scan realtime.events: %v", err)
		}
		var rc rowChange
		if err := json.Unmarshal([]byte(data), &rc); err != nil {
			t.Fatalf("event data %s: %v", data, err)
		}
		out = append(out, storedEvent{Topic: topic, Data: rc})
	}
	if err := rows.Err(); err != nil {
		t.Fatalf("read realtime.events: %v", err)
	}
	return out
}

// lastEvent returns the newest event in realtime.events.
func lastEvent(t testing.TB, conn *pgx.Conn) storedEvent {
	t.Helper()
	events := storedEvents(t, conn)
	if len(events) == 0 {
		t.Fatal("realtime.events is empty, want at least one event")
	}
	return events[len(events)-1]
}

func columnNames(m map[string]any) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func TestRowTopicTemplateLimitsDelivery(t *testing.T) {
	db := pgtest.NewDatabase(t)
	sc := startSidecar(t, db)
	sql := connect(t, db)
	exec(t, sql, `CREATE TABLE public.orders (id serial PRIMARY KEY, customer_id integer, item text)`)
	exec(t, sql, `CREATE TRIGGER orders_rt AFTER INSERT OR UPDATE OR DELETE ON public.orders
		FOR EACH ROW EXECUTE FUNCTION realtime.notify_changes('topic=orders.{customer_id}')`)

	customer7 := dialToken(t, sc, token(t, "customer-7", []string{"orders.7"}, nil))
	mine := subscribe(t, customer7, []string{"orders.7"})
	everything := subscribe(t, dial(t, sc), []string{"orders.*"})

	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	if _, err := customer7.Subscribe(ctx, []string{"orders.8"}); err == nil {
		t.Fatal("customer 7 subscribed to orders.8, want the subscription rejected")
	}

	exec(t, sql, `INSERT INTO orders (customer_id, item) VALUES (8, 'tea')`)
	exec(t, sql, `INSERT INTO orders (customer_id, item) VALUES (7, 'milk')`)

	if ev := next(t, everything); ev.Topic != "orders.8" {
		t.Fatalf("first event on orders.* = %s %s, want orders.8", ev.Topic, ev.Data)
	}
	if ev := next(t, everything); ev.Topic != "orders.7" {
		t.Fatalf("second event on orders.* = %s %s, want orders.7", ev.Topic, ev.Data)
	}

	// Events arrive in id order, so customer 8's earlier row would come
	// first if it were delivered at all.
	ev := next(t, mine)
	rc := decodeRow(t, ev)
	if ev.Topic != "orders.7" || rc.Op != "INSERT" || rc.New["item"] != "milk" {
		t.Fatalf("customer 7's first event = %s %s, want orders.7 INSERT of milk", ev.Topic, ev.Data)
	}

	exec(t, sql, `UPDATE orders SET item = 'oat milk' WHERE customer_id = 7`)
	rc = decodeRow(t, next(t, mine))
	if rc.Op != "UPDATE" || rc.New["item"] != "oat milk" || rc.Old["item"] != "milk" {
		t.Fatalf("customer 7's update event = %+v, want UPDATE from milk to oat milk", rc)
	}

	exec(t, sql, `INSERT INTO orders (customer_id, item) VALUES (8, 'coffee')`)
	exec(t, sql, `DELETE FROM orders WHERE customer_id = 7`)
	ev = next(t, mine)
	rc = decodeRow(t, ev)
	if ev.Topic != "orders.7" || rc.Op != "DELETE" || rc.Old["item"] != "oat milk" {
		t.Fatalf("customer 7's event after customer 8's insert = %s %s, want orders.7 DELETE of oat milk", ev.Topic, ev.Data)
	}
}

func TestRowTopicTemplateSanitizesValues(t *testing.T) {
	db := pgtest.NewDatabase(t)
	sql := connect(t, db)
	exec(t, sql, `CREATE TABLE public.docs (id serial PRIMARY KEY, owner text, folder text)`)
	exec(t, sql, `CREATE TRIGGER docs_rt AFTER INSERT OR UPDATE OR DELETE ON public.docs
		FOR EACH ROW EXECUTE FUNCTION realtime.notify_changes('topic=docs.{owner}.{folder}.{owner}')`)

	tests := []struct {
		owner, folder any
		want          string
	}{
		{"ann", "inbox", "docs.ann.inbox.ann"},
		{"a.b c", "x/y:z-1", "docs.a_b_c.x/y:z-1.a_b_c"},
		{"", nil, "docs._._._"},
		{"ünï", "*>", "docs._n_.__._n_"},
	}
	for _, tt := range tests {
		exec(t, sql, `INSERT INTO docs (owner, folder) VALUES ($1, $2)`, tt.owner, tt.folder)
		if got := lastEvent(t, sql).Topic; got != tt.want {
			t.Errorf("topic for owner %q, folder %v = %q, want %q", tt.owner, tt.folder, got, tt.want)
		}
	}

	// A value over 64 bytes becomes its MD5, so the write cannot fail on
	// the topic's length.
	long := strings.Repeat("o", 300)
	sum := fmt.Sprintf("%x", md5.Sum([]byte(long)))
	exec(t, sql, `INSERT INTO docs (owner, folder) VALUES ($1, 'f')`, long)
	if got, want := lastEvent(t, sql).Topic, "docs."+sum+".f."+sum; got != want {
		t.Errorf("topic for a 300-byte owner = %q, want %q", got, want)
	}

	exec(t, sql, `UPDATE docs SET owner = 'bob' WHERE owner = 'ann'`)
	if got := lastEvent(t, sql).Topic; got != "docs.bob.inbox.bob" {
		t.Errorf("topic for an update = %q, want the new row's docs.bob.inbox.bob", got)
	}
	exec(t, sql, `DELETE FROM docs WHERE owner = 'bob'`)
	if got := lastEvent(t, sql).Topic; got != "docs.bob.inbox.bob" {
		t.Errorf("topic for a delete = %q, want the old row's docs.bob.inbox.bob", got)
	}
}

func TestRowColumnsExcludeAndKeep(t *testing.T) {
	db := pgtest.NewDatabase(t)
	sql := connect(t, db)
	exec(t, sql, `CREATE TABLE public.users (id serial PRIMARY KEY, name text, email text, password_hash text, secret text)`)
	exec(t, sql, `CREATE TABLE public.profiles (id serial PRIMARY KEY, name text, email text, password_hash text)`)
	exec(t, sql, `CREATE TRIGGER users_rt AFTER INSERT OR UPDATE OR DELETE ON public.users
		FOR EACH ROW EXECUTE FUNCTION realtime.notify_changes('exclude=password_hash, secret')`)
	exec(t, sql, `CREATE TRIGGER profiles_rt AFTER INSERT OR UPDATE OR DELETE ON public.profiles
		FOR EACH ROW EXECUTE FUNCTION realtime.notify_changes('columns=id,name')`)

	exec(t, sql, `INSERT INTO users (name, email, password_hash, secret) VALUES ('ann', 'ann@example.com', 'h1', 's1')`)
	exec(t, sql, `UPDATE users SET password_hash = 'h2'`)
	exec(t, sql, `DELETE FROM users`)
	exec(t, sql, `INSERT INTO profiles (name, email, password_hash) VALUES ('bob', 'bob@example.com', 'h3')`)
	exec(t, sql, `UPDATE profiles SET email = 'robert@example.com'`)
	exec(t, sql, `DELETE FROM profiles`)

	events := storedEvents(t, sql)
	if len(events) != 6 {
		t.Fatalf("got %d events, want 6: %+v", len(events), events)
	}
	userKeys := []string{"email", "id", "name"}
	profileKeys := []string{"id", "name"}
	tests := []struct {
		op      string
		newKeys []string
		oldKeys []string
		hasNew  bool
		hasOld  bool
		topic   string
		got     storedEvent
	}{
		{"INSERT", userKeys, nil, true, false, "db.public.users", events[0]},
		{"UPDATE", userKeys, userKeys, true, true, "db.public.users", events[1]},
		{"DELETE", nil, userKeys, false, true, "db.public.users", events[2]},
		{"INSERT", profileKeys, nil, true, false, "db.public.profiles", events[3]},
		{"UPDATE", profileKeys, profileKeys, true, true, "db.public.profiles", events[4]},
		{"DELETE", nil, profileKeys, false, true, "db.public.profiles", events[5]},
	}
	for _, tt := range tests {
		rc := tt.got.Data
		if tt.got.Topic != tt.topic || rc.Op != tt.op {
			t.Errorf("event = %s %s, want %s %s", tt.got.Topic, rc.Op, tt.topic, tt.op)
			continue
		}
		if (rc.New != nil) != tt.hasNew || (rc.Old != nil) != tt.hasOld {
			t.Errorf("%s %s: new %v, old %v, want new present %v, old present %v", tt.topic, tt.op, rc.New, rc.Old, tt.hasNew, tt.hasOld)
		}
		if diff := cmp.Diff(tt.newKeys, columnNames(rc.New), cmpEmptyAsNil); rc.New != nil && diff != "" {
			t.Errorf("%s %s: new columns (-want +got):\n%s", tt.topic, tt.op, diff)
		}
		if diff := cmp.Diff(tt.oldKeys, columnNames(rc.Old), cmpEmptyAsNil); rc.Old != nil && diff != "" {
			t.Errorf("%s %s: old columns (-want +got):\n%s", tt.topic, tt.op, diff)
		}
	}
}

// cmpEmptyAsNil treats a nil and an empty slice of column names as equal.
var cmpEmptyAsNil = cmp.Comparer(func(a, b []string) bool { return slices.Equal(a, b) })

func TestOversizedRowKeyRespectsExclude(t *testing.T) {
	db := pgtest.NewDatabase(t)
	sql := connect(t, db)
	exec(t, sql, `UPDATE realtime.settings SET max_event_bytes = 1024`)
	exec(t, sql, `CREATE TABLE public.sessions (account integer, token text, body text, PRIMARY KEY (account, token))`)
	exec(t, sql, `CREATE TRIGGER sessions_rt AFTER INSERT OR UPDATE OR DELETE ON public.sessions
		FOR EACH ROW EXECUTE FUNCTION realtime.notify_changes('exclude=token')`)

	exec(t, sql, `INSERT INTO sessions VALUES (3, 'secret-token', $1)`, strings.Repeat("x", 4096))
	got := lastEvent(t, sql).Data
	if !got.Truncated {
		t.Fatalf("event for a 4 KB row with a 1 KB maximum = %+v, want truncated", got)
	}
	if diff := cmp.Diff(map[string]any{"account": float64(3)}, got.New); diff != "" {
		t.Errorf("truncated new (-want +got):\n%s", diff)
	}

	exec(t, sql, `DELETE FROM sessions`)
	got = lastEvent(t, sql).Data
	if diff := cmp.Diff(map[string]any{"account": float64(3)}, got.Old); !got.Truncated || diff != "" {
		t.Errorf("truncated delete: truncated=%v, old (-want +got):\n%s", got.Truncated, diff)
	}
}

func TestTruncateStatementEvent(t *testing.T) {
	db := pgtest.NewDatabase(t)
	sc := startSidecar(t, db)
	sql := connect(t, db)
	exec(t, sql, `CREATE TABLE app_todos (id serial PRIMARY KEY, title text)`)
	exec(t, sql, `CREATE TRIGGER a_todos_truncate AFTER TRUNCATE ON app_todos
		FOR EACH STATEMENT EXECUTE FUNCTION realtime.notify_changes()`)
	exec(t, sql, `CREATE TRIGGER b_todos_truncate_topic AFTER TRUNCATE ON app_todos
		FOR EACH STATEMENT EXECUTE FUNCTION realtime.notify_changes('topic=lists.cleared', 'exclude=title')`)

	sub := subscribe(t, dial(t, sc), []string{"db.public.app_todos", "lists.cleared"})
	exec(t, sql, `INSERT INTO app_todos (title) VALUES ('milk')`)
	exec(t, sql, `TRUNCATE app_todos`)

	// Triggers of one event fire in name order.
	for _, wantTopic := range []string{"db.public.app_todos", "lists.cleared"} {
		ev := next(t, sub)
		var raw map[string]any
		if err := json.Unmarshal(ev.Data, &raw); err != nil {
			t.Fatalf("event data %s: %v", ev.Data, err)
		}
		want := map[string]any{"op": "TRUNCATE", "schema": "public", "table": "app_todos", "new": nil, "old": nil}
		if ev.Topic != wantTopic {
			t.Errorf("event topic = %s, want %s", ev.Topic, wantTopic)
		}
		if diff := cmp.Diff(want, raw); diff != "" {
			t.Errorf("TRUNCATE event on %s (-want +got):\n%s", ev.Topic, diff)
		}
	}
}

func TestNotifyChangesArgumentErrors(t *testing.T) {
	db := pgtest.NewDatabase(t)
	sql := connect(t, db)

	tests := []struct {
		name    string
		trigger string // after "CREATE TRIGGER rt " with %s for the table
		fire    string // with %s for the table
		code    string
		want    string
	}{
		{"unknown key", `AFTER INSERT ON %s FOR EACH ROW EXECUTE FUNCTION realtime.notify_changes('colums=id')`,
			`INSERT INTO %s (id) VALUES (1)`, "22023", `invalid trigger argument 'colums=id': unknown key 'colums'`},
		{"missing value", `AFTER INSERT ON %s FOR EACH ROW EXECUTE FUNCTION realtime.notify_changes('topic')`,
			`INSERT INTO %s (id) VALUES (1)`, "22023", `invalid trigger argument 'topic': want key=value`},
		{"empty column list", `AFTER INSERT ON %s FOR EACH ROW EXECUTE FUNCTION realtime.notify_changes('columns=id,')`,
			`INSERT INTO %s (id) VALUES (1)`, "22023", `invalid trigger argument 'columns=id,': want a comma-separated list`},
		{"misspelled excluded column", `AFTER INSERT ON %s FOR EACH ROW EXECUTE FUNCTION realtime.notify_changes('exclude=pasword_hash')`,
			`INSERT INTO %s (id) VALUES (1)`, "22023", `table has no column pasword_hash`},
		{"unknown placeholder", `AFTER INSERT ON %s FOR EACH ROW EXECUTE FUNCTION realtime.notify_changes('topic=orders.{custmer}')`,
			`INSERT INTO %s (id) VALUES (1)`, "22023", `invalid trigger argument topic=orders.{custmer}: table has no column custmer`},
		{"invalid topic", `AFTER INSERT ON %s FOR EACH ROW EXECUTE FUNCTION realtime.notify_changes('topic=orders..{id}')`,
			`INSERT INTO %s (id) VALUES (1)`, "22023", `it gives 'orders..1', which is not a valid topic`},
		{"reserved namespace", `AFTER INSERT ON %s FOR EACH ROW EXECUTE FUNCTION realtime.notify_changes('topic=sys.{id}')`,
			`INSERT INTO %s (id) VALUES (1)`, "22023", `namespace reserved for the sidecar`},
		{"repeated key", `AFTER INSERT ON %s FOR EACH ROW EXECUTE FUNCTION realtime.notify_changes('topic=a', 'topic=b')`,
			`INSERT INTO %s (id) VALUES (1)`, "22023", `invalid trigger argument 'topic=b': topic is given twice`},
		{"placeholder on truncate", `AFTER TRUNCATE ON %s FOR EACH STATEMENT EXECUTE FUNCTION realtime.notify_changes('topic=t.{id}')`,
			`TRUNCATE %s`, "22023", `a TRUNCATE trigger has no row for placeholders`},
		{"statement-level insert", `AFTER INSERT ON %s FOR EACH STATEMENT EXECUTE FUNCTION realtime.notify_changes()`,
			`INSERT INTO %s (id) VALUES (1)`, "P0001", `must be an AFTER ... FOR EACH ROW trigger, or AFTER TRUNCATE ... FOR EACH STATEMENT`},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			table := fmt.Sprintf("bad_%d", i)
			exec(t, sql, fmt.Sprintf(`CREATE TABLE %s (id integer PRIMARY KEY)`, table))
			exec(t, sql, fmt.Sprintf(`CREATE TRIGGER rt `+tt.trigger, table))

			_, err := sql.Exec(context.Background(), fmt.Sprintf(tt.fire, table))
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) {
				t.Fatalf("%s: error = %v, want a Postgres error", tt.fire, err)
			}
			if pgErr.Code != tt.code {
				t.Errorf("SQLSTATE = %s, want %s (%s)", pgErr.Code, tt.code, pgErr.Message)
			}
			if !strings.Contains(pgErr.Message, tt.want) {
				t.Errorf("message = %q, want it to contain %q", pgErr.Message, tt.want)
			}
			if !strings.Contains(pgErr.Message, "public."+table) {
				t.Errorf("message = %q, want it to name the table public.%s", pgErr.Message, table)
			}
		})
	}
}
