package migrations

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"
)

// LockID is the advisory lock that serialises concurrent migration runs
// ("rt-goose" in ASCII). It differs from goose's default, so the
// application's own goose runs never wait for the sidecar's.
const LockID int64 = 8247266739896677221

// VersionTable is where goose records the applied versions.
const VersionTable = "realtime.goose_version"

// Status is the state of one migration.
type Status struct {
	Version   int64
	Name      string
	Applied   bool
	AppliedAt time.Time
}

// Up applies every pending migration to the database at databaseURL. Several
// sidecars may call it at once: one applies the migrations under the lock,
// the others wait (up to about a minute) and then find nothing pending.
func Up(ctx context.Context, databaseURL string, logger *slog.Logger) error {
	return withProvider(ctx, databaseURL, logger, func(p *goose.Provider) error {
		results, err := p.Up(ctx)
		if err != nil {
			return fmt.Errorf("apply migrations: %w", err)
		}
		for _, r := range results {
			logger.Info("migration applied", "version", r.Source.Version, "file", r.Source.Path, "duration", r.Duration)
		}
		return nil
	})
}

// List reports each embedded migration and whether the database has it.
func List(ctx context.Context, databaseURL string, logger *slog.Logger) ([]Status, error) {
	var out []Status
	err := withProvider(ctx, databaseURL, logger, func(p *goose.Provider) error {
		statuses, err := p.Status(ctx)
		if err != nil {
			return fmt.Errorf("read migration status: %w", err)
		}
		for _, s := range statuses {
			out = append(out, Status{
				Version:   s.Source.Version,
				Name:      s.Source.Path,
				Applied:   s.State == goose.StateApplied,
				AppliedAt: s.AppliedAt,
			})
		}
		return nil
	})
	return out, err
}

func withProvider(ctx context.Context, databaseURL string, logger *slog.Logger, fn func(*goose.Provider) error) error {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}

	pool, err := pgxpool.New(ctx, databaseURL)
	if err != nil {
		return fmt.Errorf("connect for migrations: %w", err)
	}
	defer pool.Close()

	// The version table lives in the schema, so the schema must exist
	// before goose looks for it. Two sessions running CREATE SCHEMA IF NOT
	// EXISTS at once can still collide on the catalog's unique index, so
	// the migration lock serialises them.
	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", LockID); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, "CREATE SCHEMA IF NOT EXISTS realtime")
		return err
	})
	if err != nil {
		return fmt.Errorf("create schema realtime: %w", err)
	}

	db := stdlib.OpenDBFromPool(pool)
	defer db.Close()

	p, err := newProvider(db, logger)
	if err != nil {
		return err
	}
	return fn(p)
}

func newProvider(db *sql.DB, logger *slog.Logger) (*goose.Provider, error) {
	locker, err := lock.NewPostgresSessionLocker(lock.WithLockID(LockID), lock.WithLockTimeout(1, 120))
	if err != nil {
		return nil, fmt.Errorf("migration lock: %w", err)
	}

	p, err := goose.NewProvider(goose.DialectPostgres, db, FS,
		goose.WithTableName(VersionTable),
		goose.WithSessionLocker(locker),
		goose.WithDisableGlobalRegistry(true),
		goose.WithSlog(logger),
	)
	if err != nil {
		return nil, fmt.Errorf("load migrations: %w", err)
	}
	return p, nil
}
