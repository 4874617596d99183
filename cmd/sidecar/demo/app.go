package demo

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgsidecar/sidecar/appcall"
	"github.com/pgsidecar/sidecar/rpc"
)

// MaxTitleBytes bounds the title of one todo.
const MaxTitleBytes = 500

// Todo is one row of the todos table, encoded as the row-change trigger
// encodes it, so the page treats list results and events alike.
type Todo struct {
	ID        int64     `json:"id"`
	Title     string    `json:"title"`
	Done      bool      `json:"done"`
	CreatedAt time.Time `json:"created_at"`
}

// List is the result of app.todos.list. Head is the newest durable event
// id when the rows were read, and Epoch the id space it belongs to: a
// subscription with since=Head and epoch=Epoch receives every change made
// after the rows were read.
type List struct {
	Todos []Todo `json:"todos"`
	Head  int64  `json:"head"`
	Epoch string `json:"epoch"`
}

// App handles the demo page's calls app.todos.list, app.todos.add and
// app.todos.toggle with SQL on the todos table. It publishes nothing
// itself: the table's trigger turns each write into an event on
// db.public.todos. App implements server.Application and is safe for
// concurrent use.
type App struct {
	pool *pgxpool.Pool
	log  *slog.Logger
}

// NewApp returns an App that queries pool, which the caller owns. A nil
// logger discards.
func NewApp(pool *pgxpool.Pool, log *slog.Logger) *App {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &App{pool: pool, log: log}
}

// Forward runs one method. c.Method has no "app." prefix.
func (a *App) Forward(ctx context.Context, c appcall.Call) (json.RawMessage, *rpc.Error) {
	var result any
	var rerr *rpc.Error
	switch c.Method {
	case "todos.list":
		result, rerr = a.list(ctx)
	case "todos.add":
		result, rerr = a.add(ctx, c.Params)
	case "todos.toggle":
		result, rerr = a.toggle(ctx, c.Params)
	default:
		return nil, rpc.MethodNotFound("app." + c.Method)
	}
	if rerr != nil {
		return nil, rerr
	}

	raw, err := json.Marshal(result)
	if err != nil {
		return nil, a.internal(c.Method, fmt.Errorf("encode result: %w", err))
	}
	return raw, nil
}

// list reads the rows and the head in one snapshot. Ids are assigned in
// commit order, so every change that the snapshot misses has an id above
// the head it reads.
func (a *App) list(ctx context.Context) (List, *rpc.Error) {
	out := List{Todos: []Todo{}}
	err := pgx.BeginTxFunc(ctx, a.pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		err := tx.QueryRow(ctx, `
			SELECT greatest(
				(SELECT coalesce(max(last_id), 0) FROM realtime.transactions),
				(SELECT purged_through FROM realtime.settings)),
				realtime.epoch()`).Scan(&out.Head, &out.Epoch)
		if err != nil {
			return fmt.Errorf("read head: %w", err)
		}

		rows, err := tx.Query(ctx, "SELECT id, title, done, created_at FROM public.todos ORDER BY id")
		if err != nil {
			return fmt.Errorf("read todos: %w", err)
		}
		out.Todos, err = pgx.CollectRows(rows, pgx.RowToStructByPos[Todo])
		return err
	})
	if err != nil {
		return List{}, a.internal("todos.list", err)
	}
	return out, nil
}

type addParams struct {
	Title string `json:"title"`
}

func (a *App) add(ctx context.Context, raw json.RawMessage) (Todo, *rpc.Error) {
	var p addParams
	if err := decodeParams(raw, &p); err != nil {
		return Todo{}, rpc.InvalidParams("app.todos.add takes {\"title\": string}: %v", err)
	}
	title := strings.TrimSpace(p.Title)
	switch {
	case title == "":
		return Todo{}, rpc.InvalidParams("app.todos.add: title is empty")
	case len(title) > MaxTitleBytes:
		return Todo{}, rpc.InvalidParams("app.todos.add: title is %d bytes, over the limit of %d", len(title), MaxTitleBytes)
	case !utf8.ValidString(title):
		return Todo{}, rpc.InvalidParams("app.todos.add: title is not valid UTF-8")
	}

	rows, err := a.pool.Query(ctx, "INSERT INTO public.todos (title) VALUES ($1) RETURNING id, title, done, created_at", title)
	if err != nil {
		return Todo{}, a.internal("todos.add", err)
	}
	todo, err := pgx.CollectExactlyOneRow(rows, pgx.RowToStructByPos[Todo])
	if err != nil {
		return Todo{}, a.internal("todos.add", err)
	}
	return todo, nil
}

type toggleParams struct {
	ID *int64 `json:"id"`
}

func (a *App) toggle(ctx context.Context, raw json.RawMessage) (Todo, *rpc.Error) {
	var p toggleParams
	if err := decodeParams(raw, &p); err != nil || p.ID == nil {
		return Todo{}, rpc.InvalidParams("app.todos.toggle takes {\"id\": integer}")
	}

	rows, err := a.pool.Query(ctx, "UPDATE public.todos SET done = NOT done WHERE id = $1 RETURNING id, title, done, created_at", *p.ID)
	if err != nil {
		return Todo{}, a.internal("todos.toggle", err)
	}
	todo, err := pgx.CollectExactlyOneRow(rows, pgx.RowToStructByPos[Todo])
	if errors.Is(err, pgx.ErrNoRows) {
		return Todo{}, rpc.InvalidParams("app.todos.toggle: no todo has id %d", *p.ID)
	}
	if err != nil {
		return Todo{}, a.internal("todos.toggle", err)
	}
	return todo, nil
}

// decodeParams decodes params into v, rejecting unknown fields. Absent
// params leave v at its zero value.
func decodeParams(raw json.RawMessage, v any) error {
	if len(raw) == 0 {
		return nil
	}
	dec := json.NewDecoder(strings.NewReader(string(raw)))
	dec.DisallowUnknownFields()
	return dec.Decode(v)
}

// internal logs err and returns a -32603 error that hides its details.
func (a *App) internal(method string, err error) *rpc.Error {
	a.log.Error("demo method failed", "method", "app."+method, "err", err)
	return rpc.Errorf(rpc.CodeInternal, "app.%s failed: see the sidecar's log", method)
}
