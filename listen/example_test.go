package listen_test

import (
	"context"
	"log/slog"
	"os"

	"github.com/jackc/pgx/v5"
	"github.com/pgsidecar/sidecar/listen"
)

func Example() {
	ctx := context.Background()

	// A direct connection to the primary, separate from any pool.
	cfg, err := pgx.ParseConfig(os.Getenv("LISTEN_DATABASE_URL"))
	if err != nil {
		slog.Error("parse database URL", "error", err)
		return
	}

	l, err := listen.New(listen.Config{
		Connect: func(ctx context.Context) (*pgx.Conn, error) {
			return pgx.ConnectConfig(ctx, cfg.Copy())
		},
		Channels: []string{"realtime_changes"},
		Logger:   slog.Default(),
	})
	if err != nil {
		slog.Error("configure listener", "error", err)
		return
	}

	go func() {
		for ev := range l.Events() {
			switch ev.Kind {
			case listen.Resync:
				// Read the rows committed since the last one seen.
			case listen.Notification:
				slog.Info("notification", "channel", ev.Channel, "payload", ev.Payload)
			}
		}
	}()

	if err := l.Run(ctx); err != nil {
		slog.Error("listener", "error", err)
	}
}
