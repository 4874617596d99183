package listen

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Log attribute keys.
const (
	logKeyError      = "error"
	logKeyGeneration = "generation"
	logKeyBackendPID = "backend_pid"
	logKeyChannel    = "channel"
	logKeyChannels   = "channels"
	logKeyRetryIn    = "retry_in"
	logKeyUptime     = "connected_for"
	logKeyFailures   = "failures_since_last_log"
	logKeyDrops      = "drops_since_last_log"
	logKeyDropped    = "dropped_total"
)

// errNilNotification means the connection's config set OnNotification, so
// pgx does not buffer notifications for WaitForNotification. Reconnecting
// with the same Connect cannot fix that.
var errNilNotification = errors.New("received a nil notification: the connection config must leave OnNotification nil")

// Run connects, listens to every channel and delivers events until ctx
// ends, reconnecting with backoff whenever the connection fails. It blocks
// and returns nil once ctx ends, after closing the connection. Run may be
// called once per Listener, and it closes the Events channel when it
// returns.
//
// Connect failures are retried, including the first one, because the
// database may start after the sidecar. Run gives up and returns an error
// only when retrying cannot help: Connect returned an error wrapping a
// *pgconn.ParseConfigError, or the connection does not buffer
// notifications. The returned error's message has passwords masked, and
// errors.As still reaches the original.
func (l *Listener) Run(ctx context.Context) error {
	if !l.running.CompareAndSwap(false, true) {
		return ErrRunning
	}
	defer close(l.out.events)

	bo := backoff{min: l.cfg.MinBackoff, max: l.cfg.MaxBackoff, rand: l.rand}
	failures := logLimiter{interval: logInterval}
	drops := logLimiter{interval: logInterval}

	for {
		connectedAt, err := l.session(ctx, &failures, &drops)
		if ctx.Err() != nil {
			l.status.disconnected(time.Now())
			l.log.Info("listener stopped")
			return nil
		}

		msg := redact(err.Error())
		l.status.failed(time.Now(), msg)
		if permanent(err) {
			return fmt.Errorf("listen: %w", &redactedError{err})
		}

		if !connectedAt.IsZero() && time.Since(connectedAt) >= healthyAfter {
			bo.reset()
		}
		delay := bo.next()
		l.logRetry(msg, connectedAt, delay, &failures)

		if !sleep(ctx, delay) {
			l.status.disconnected(time.Now())
			l.log.Info("listener stopped")
			return nil
		}
		l.status.reconnecting()
	}
}

// logRetry logs the end of a connection every time, and failed connect
// attempts at most once per logInterval.
func (l *Listener) logRetry(msg string, connectedAt time.Time, delay time.Duration, failures *logLimiter) {
	if !connectedAt.IsZero() {
		l.log.Warn("listener connection lost", slog.String(logKeyError, msg),
			slog.Duration(logKeyUptime, time.Since(connectedAt)), slog.Duration(logKeyRetryIn, delay))
		return
	}

	if ok, suppressed := failures.allow(time.Now()); ok {
		l.log.Warn("listener connect failed", slog.String(logKeyError, msg),
			slog.Int(logKeyFailures, suppressed+1), slog.Duration(logKeyRetryIn, delay))
	}
}

// permanent reports whether err cannot go away by reconnecting.
func permanent(err error) bool {
	var parseErr *pgconn.ParseConfigError
	return errors.As(err, &parseErr) || errors.Is(err, errNilNotification)
}

// session runs one connection from connect to failure. It returns when the
// connection was established, zero if connecting or listening failed, and
// the error that ended it.
func (l *Listener) session(ctx context.Context, failures, drops *logLimiter) (time.Time, error) {
	conn, err := l.connect(ctx)
	if err != nil {
		return time.Time{}, err
	}
	defer closeConn(ctx, conn)

	start := time.Now()
	pid := conn.PgConn().PID()
	generation := l.status.connected(start, pid)
	l.readyOnce.Do(func() { close(l.ready) })
	failures.reset()

	l.log.Info("listener connected",
		slog.Uint64(logKeyGeneration, generation), slog.Uint64(logKeyBackendPID, uint64(pid)), slog.Any(logKeyChannels, l.channels))
	l.out.resync(generation)

	return start, l.receive(ctx, conn, generation, drops)
}

// connect opens a connection and listens to every channel, within
// ConnectTimeout. On error it closes what it opened.
func (l *Listener) connect(ctx context.Context) (*pgx.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, l.cfg.ConnectTimeout)
	defer cancel()

	conn, err := l.cfg.Connect(ctx)
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	if conn == nil {
		return nil, errors.New("connect: Connect returned neither a connection nor an error")
	}

	for _, ch := range l.channels {
		if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{ch}.Sanitize()); err != nil {
			closeConn(ctx, conn)
			return nil, fmt.Errorf("listen %q: %w", ch, err)
		}
	}

	return conn, nil
}

// receive waits for notifications and delivers them until the connection
// fails or ctx ends. A silent connection is pinged every PingInterval.
func (l *Listener) receive(ctx context.Context, conn *pgx.Conn, generation uint64, drops *logLimiter) error {
	lastHeard := time.Now()

	for {
		if time.Since(lastHeard) >= l.cfg.PingInterval {
			if err := l.ping(ctx, conn); err != nil {
				return err
			}
			lastHeard = time.Now()
		}

		wait := time.Until(lastHeard.Add(l.cfg.PingInterval))
		if !l.out.flush() {
			wait = min(wait, owedRetry)
		}

		// A deadline during the wait leaves the connection usable, so the
		// loop can time out, ping and wait again on the same connection.
		waitCtx, cancel := context.WithTimeout(ctx, wait)
		n, err := conn.WaitForNotification(waitCtx)
		cancel()

		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case err == nil && n == nil:
			return errNilNotification
		case err == nil:
			lastHeard = time.Now()
			l.deliver(Event{Kind: Notification, Channel: n.Channel, Payload: n.Payload, Generation: generation}, drops)
		case pgconn.Timeout(err):
			continue
		default:
			return fmt.Errorf("wait for notification: %w", err)
		}
	}
}

func (l *Listener) deliver(ev Event, drops *logLimiter) {
	if l.out.notify(ev) {
		return
	}

	if ok, suppressed := drops.allow(time.Now()); ok {
		l.log.Warn("listener dropped a notification: event buffer full",
			slog.String(logKeyChannel, ev.Channel), slog.Int(logKeyDrops, suppressed+1),
			slog.Uint64(logKeyDropped, l.out.dropped.Load()))
	}
}

func (l *Listener) ping(ctx context.Context, conn *pgx.Conn) error {
	ctx, cancel := context.WithTimeout(ctx, l.cfg.PingTimeout)
	defer cancel()

	if _, err := conn.Exec(ctx, "select 1"); err != nil {
		return fmt.Errorf("ping: %w", err)
	}

	return nil
}

// closeConn closes conn even when ctx has ended, within closeTimeout.
func closeConn(ctx context.Context, conn *pgx.Conn) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), closeTimeout)
	defer cancel()

	// The connection is discarded either way, and the error that ended it
	// has been recorded already.
	_ = conn.Close(ctx)
}

// sleep waits for d and reports whether ctx was still live at the end.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()

	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
