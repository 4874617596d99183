package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"

	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/pgsidecar/sidecar/client"
	"github.com/pgsidecar/sidecar/db/migrations"
	"github.com/pgsidecar/sidecar/server"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

const usage = `sidecar: realtime messaging beside your application, on Postgres LISTEN/NOTIFY.

Commands:
  serve               run the server (applies migrations at start unless --migrate=false)
  migrate up|status   apply or list the embedded migrations
  pub TOPIC JSON      publish one event through the HTTP API
  sub PATTERN...      subscribe over the websocket and print events as JSON lines
  dev                 start a throwaway local Postgres, the server and a demo
  health [URL]        exit 0 when the instance at URL (default http://127.0.0.1:7070) is ready
  version             print the version and build information

Run "sidecar COMMAND -h" for a command's flags. Every flag also has an
environment variable, named in its help.
`

func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitError(2)
	}

	cmd, rest := args[0], args[1:]
	switch cmd {
	case "serve":
		return runServe(ctx, rest, getenv, stderr)
	case "migrate":
		return runMigrate(ctx, rest, getenv, stdout, stderr)
	case "pub":
		return runPub(ctx, rest, getenv, stdout, stderr)
	case "sub":
		return runSub(ctx, rest, getenv, stdout, stderr)
	case "dev":
		return runDev(ctx, rest, getenv, stdout, stderr)
	case "health":
		return runHealth(ctx, rest, stdout, stderr)
	case "version":
		return writeVersion(stdout, version, buildInfo())
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprintf(stderr, "unknown command %q\n\n%s", cmd, usage)
	return exitError(2)
}

// parseFlags parses a command's flags. -h prints the usage and ends with 0.
// A failure prints one line prefixed "sidecar:", followed by a pointer to
// -h when the command line was wrong, and ends with 2.
func parseFlags(f *envFlags, args []string, getenv func(string) string, stderr io.Writer) error {
	f.fs.SetOutput(stderr)
	err := f.parse(args, getenv)
	if err == nil {
		return nil
	}
	if errors.Is(err, flag.ErrHelp) {
		return exitError(0)
	}

	fmt.Fprintln(stderr, "sidecar:", err)
	if errors.As(err, new(commandLineError)) {
		fmt.Fprintf(stderr, "run %q to list the flags\n", f.fs.Name()+" -h")
	}
	return exitError(2)
}

func newLogger(w io.Writer, format, level string) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: use debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lvl}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: use text or json", format)
}

func runServe(ctx context.Context, args []string, getenv func(string) string, stderr io.Writer) error {
	cfg := server.Defaults()
	cfg.Version = version
	f, flags := newServeFlags(&cfg)
	if err := parseFlags(f, args, getenv, stderr); err != nil {
		return err
	}

	logger, err := newLogger(stderr, *flags.logFormat, *flags.logLevel)
	if err != nil {
		return err
	}
	cfg.Logger = logger

	if *flags.debugAddr != "" {
		if err := serveDebug(ctx, *flags.debugAddr, logger.With("component", "debug")); err != nil {
			return err
		}
	}

	srv, err := server.New(cfg)
	if err != nil {
		return err
	}
	return srv.Run(ctx)
}

// newMigrateFlags declares the flags of "sidecar migrate".
func newMigrateFlags() (f *envFlags, databaseURL *string) {
	f = newEnvFlags("sidecar migrate")
	databaseURL = f.fs.String("database-url", "", "Postgres URL")
	f.bind("database-url", "DATABASE_URL")
	return f, databaseURL
}

func runMigrate(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	f, urlFlag := newMigrateFlags()
	// Flags may come before or after the subcommand.
	sub := ""
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		sub, args = args[0], args[1:]
	}
	if err := parseFlags(f, args, getenv, stderr); err != nil {
		return err
	}
	if sub == "" {
		sub = f.fs.Arg(0)
	}
	url := *urlFlag
	if url == "" {
		return errors.New("--database-url (DATABASE_URL) is not set: give the Postgres URL to migrate")
	}
	logger := slog.New(slog.NewTextHandler(stderr, nil))

	switch sub {
	case "up":
		return migrations.Up(ctx, url, logger)
	case "status":
		list, err := migrations.List(ctx, url, logger)
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "VERSION\tFILE\tAPPLIED")
		for _, m := range list {
			applied := "pending"
			if m.Applied {
				applied = m.AppliedAt.UTC().Format(time.RFC3339)
			}
			fmt.Fprintf(tw, "%d\t%s\t%s\n", m.Version, m.Name, applied)
		}
		return tw.Flush()
	}
	fmt.Fprintln(stderr, "usage: sidecar migrate up|status")
	return exitError(2)
}

// pubFlags contains the values of the "sidecar pub" flags.
type pubFlags struct {
	url, apiKey *string
	ephemeral   *bool
}

// newPubFlags declares the flags of "sidecar pub".
func newPubFlags() (*envFlags, pubFlags) {
	f := newEnvFlags("sidecar pub")
	var v pubFlags
	v.url = f.fs.String("url", "http://127.0.0.1:7070", "base URL of the sidecar's HTTP API")
	f.bind("url", "SIDECAR_URL")
	v.apiKey = f.fs.String("api-key", "", "API key (defaults to the first of SIDECAR_API_KEYS)")
	f.bind("api-key", "SIDECAR_API_KEY")
	v.ephemeral = f.fs.Bool("ephemeral", false, "publish an ephemeral event (NOTIFY only, no id, no replay)")
	return f, v
}

func runPub(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	f, flags := newPubFlags()
	if err := parseFlags(f, args, getenv, stderr); err != nil {
		return err
	}
	base, key, ephemeral := *flags.url, *flags.apiKey, *flags.ephemeral
	if key == "" {
		key = firstListItem(getenv("SIDECAR_API_KEYS"))
	}
	if f.fs.NArg() != 2 {
		fmt.Fprintln(stderr, "usage: sidecar pub [flags] TOPIC JSON")
		return exitError(2)
	}
	topicName, data := f.fs.Arg(0), f.fs.Arg(1)
	if !json.Valid([]byte(data)) {
		return fmt.Errorf("data %q is not valid JSON: quote strings, for example '\"hello\"'", data)
	}
	// Without a key the sidecar rejects the request with 401, whose
	// message is about the server's --api-keys, so the request is not sent.
	if key == "" {
		return errors.New("--api-key (SIDECAR_API_KEY) is not set, and neither is SIDECAR_API_KEYS: give one of the keys that the sidecar's --api-keys lists")
	}

	body, _ := json.Marshal(map[string]any{"topic": topicName, "data": json.RawMessage(data), "durable": !ephemeral})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimSuffix(base, "/")+"/v1/publish", bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("--url %q: %w", base, err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+key)

	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("publish: %w", err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("publish: %s: %s", resp.Status, bytes.TrimSpace(out))
	}
	fmt.Fprintln(stdout, string(bytes.TrimSpace(out)))
	return nil
}

// subFlags contains the values of the "sidecar sub" flags.
type subFlags struct {
	url, token *string
	since      *int64
}

// newSubFlags declares the flags of "sidecar sub".
func newSubFlags() (*envFlags, subFlags) {
	f := newEnvFlags("sidecar sub")
	var v subFlags
	v.url = f.fs.String("url", "ws://127.0.0.1:7070/v1/ws", "websocket URL of the sidecar")
	f.bind("url", "SIDECAR_WS_URL")
	v.token = f.fs.String("token", "", "client token (JWT); empty connects anonymously")
	f.bind("token", "SIDECAR_TOKEN")
	v.since = f.fs.Int64("since", -1, "replay durable events after this id first (-1: live events only)")
	return f, v
}

func runSub(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	f, flags := newSubFlags()
	if err := parseFlags(f, args, getenv, stderr); err != nil {
		return err
	}
	url, token, since := *flags.url, *flags.token, *flags.since
	if f.fs.NArg() == 0 {
		fmt.Fprintln(stderr, "usage: sidecar sub [flags] PATTERN...")
		return exitError(2)
	}

	// Reconnect and reload notices go to stderr from the client's
	// goroutine, so the writes are serialized.
	notices := &lockedWriter{w: stderr}
	var connected atomic.Bool
	// A rejected token stays rejected, so retrying it would loop for ever.
	ctx, stop := context.WithCancelCause(ctx)
	defer stop(nil)
	c := client.Connect(ctx, url, client.ReconnectOptions{
		Options: client.Options{Token: token},
		OnState: func(s client.State) {
			switch s.Kind {
			case client.Connected:
				if connected.Swap(true) {
					fmt.Fprintf(notices, "reconnected to %s as %s\n", url, s.Welcome.ClientID)
				}
			case client.Disconnected:
				var hs *client.HandshakeError
				if errors.As(s.Err, &hs) && hs.StatusCode == http.StatusUnauthorized {
					stop(fmt.Errorf("the sidecar rejected the token: %w: give a current token with --token or SIDECAR_TOKEN (sidecar dev prints a new one at each start)", s.Err))
					return
				}
				fmt.Fprintf(notices, "disconnected from %s: %v; reconnecting in %s\n", url, s.Err, s.Retry.Round(time.Millisecond))
			}
		},
	})
	defer c.Close()
	rejected := func() error {
		if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
			return cause
		}
		return nil
	}

	var opts []client.SubscribeOption
	if since >= 0 {
		opts = append(opts, client.WithSince(since))
	}
	stream, err := c.Subscribe(ctx, f.fs.Args(), opts...)
	if err := rejected(); err != nil {
		return err
	}
	var rpcErr *client.RPCError
	if errors.As(err, &rpcErr) && rpcErr.Code == client.CodeNotAuthenticated && token == "" {
		return fmt.Errorf("subscribe: %w: give a client token with --token or SIDECAR_TOKEN", err)
	}
	if errors.Is(err, context.Canceled) {
		return nil // interrupted before the first subscription, for example while the sidecar is unreachable
	}
	if err != nil {
		return fmt.Errorf("subscribe: %w", err)
	}
	fmt.Fprintf(notices, "subscribed to %s (epoch %s); Ctrl-C to stop\n", strings.Join(f.fs.Args(), " "), stream.Epoch())

	err = printEvents(ctx, stream, stdout, notices)
	if rerr := rejected(); rerr != nil {
		return rerr
	}
	return err
}

// printEvents prints each event as a JSON line until ctx ends. It writes a
// notice to stderr when the stream could not resume and skipped events.
func printEvents(ctx context.Context, stream *client.Stream, stdout, stderr io.Writer) error {
	enc := json.NewEncoder(stdout)
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-stream.Reload():
			fmt.Fprintf(stderr, "reload: %v; some events were missed, continuing with new events\n", err)
		case ev, ok := <-stream.Events():
			if !ok {
				return nil
			}
			line := map[string]any{"topic": ev.Topic, "data": ev.Data, "ts": ev.TS.UTC().Format("2006-01-02T15:04:05.000000Z")}
			if ev.ID != 0 {
				line["id"] = ev.ID
			}
			if err := enc.Encode(line); err != nil {
				return err
			}
		}
	}
}

// firstListItem returns the first non-empty item of a comma-separated
// list, trimmed as listValue trims it, or "" when there is none.
func firstListItem(list string) string {
	for item := range strings.SplitSeq(list, ",") {
		if item = strings.TrimSpace(item); item != "" {
			return item
		}
	}
	return ""
}

// lockedWriter serializes writes to w.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func runHealth(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	url := "http://127.0.0.1:7070"
	if len(args) > 0 {
		if strings.HasPrefix(args[0], "-") {
			fmt.Fprintln(stderr, "usage: sidecar health [URL]  (exits 0 when URL/readyz returns 200; default "+url+")")
			return exitError(2)
		}
		url = args[0]
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()

	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(url, "/")+"/readyz", nil)
	if err != nil {
		return fmt.Errorf("health URL %q: %w", url, err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("not ready: %w", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("not ready: %s %s", resp.Status, bytes.TrimSpace(body))
	}
	fmt.Fprintln(stdout, "ready")
	return nil
}
