package client

import (
	"context"
	"errors"
	"fmt"
	"github.com/pgsidecar/sidecar/rpc"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
)

// Defaults for the zero values in Options.
const (
	DefaultReadLimit   = 16 << 20 // bytes
	DefaultEventBuffer = 1024     // events per subscription
)

// Options configures Dial. The zero value connects without a token.
type Options struct {
	// Token is a JWT. By default it is sent as "Authorization: Bearer
	// <token>" with the upgrade request.
	Token string

	// TokenInQuery sends Token as the access_token query parameter
	// instead, as browsers must. The URL, token included, may then appear
	// in proxy logs.
	TokenInQuery bool

	// AuthMessage opens the connection without a token and sends Token
	// with an auth request as the first message, before Dial returns.
	// At most one of TokenInQuery and AuthMessage may be set.
	AuthMessage bool

	// Header contains extra headers for the upgrade request, such as Origin.
	Header http.Header

	// HTTPClient performs the upgrade request, for example with a custom
	// TLS configuration for wss URLs. Nil means http.DefaultClient.
	HTTPClient *http.Client

	// ReadLimit is the largest message, in bytes, that the client accepts.
	// A larger message closes the connection with code 1009. It must be at
	// least the sidecar's maximum event size plus the notification's
	// envelope. Zero means DefaultReadLimit.
	ReadLimit int64

	// EventBuffer is the capacity of each subscription's Events channel,
	// unless Subscribe is given WithBuffer. Zero means DefaultEventBuffer.
	EventBuffer int

	// IdleTimeout closes the connection with ErrIdleTimeout when the
	// client has waited this long for a message. The sidecar sends a
	// heartbeat whenever it has sent nothing else for the welcome's
	// heartbeat interval, so silence means a dead connection. Time that
	// the reader spends waiting for a slow consumer does not count. Zero
	// means twice the heartbeat interval, and a negative value disables
	// the check.
	IdleTimeout time.Duration

	// Handlers are registered as by Conn.Handle before the connection
	// opens, so that they also respond to requests that arrive right after the
	// welcome notification. Dial copies the map.
	Handlers map[string]Handler

	// Logger receives debug and warning records about unexpected messages
	// from the sidecar. It never receives the token. Nil discards them.
	Logger *slog.Logger
}

// Welcome is the content of the sidecar's welcome notification.
type Welcome struct {
	// ClientID names this connection, and the application uses it to call
	// this client. It is new for every connection.
	ClientID string

	// Epoch names the sidecar's event id space. A resume point is only
	// valid within one epoch.
	Epoch string

	// Version is the sidecar's version.
	Version string

	// Heartbeat is the interval after which the sidecar sends a heartbeat
	// notification when it has sent nothing else.
	Heartbeat time.Duration
}

// Conn is a connection to the sidecar. All its methods are safe for
// concurrent use.
//
// A Conn owns a reader goroutine and the goroutines that run Handlers. The
// caller must call Close when done with it, also after the connection has
// ended, to release them.
type Conn struct {
	ws     *websocket.Conn
	log    *slog.Logger
	buffer int

	// ctx lives as long as the connection. Writes use it rather than a
	// caller's context, because a cancelled write closes the socket.
	ctx    context.Context
	cancel context.CancelFunc

	welcome  Welcome
	welcomed chan struct{} // closed once welcome is set

	nextID atomic.Int64

	mu       sync.Mutex
	pending  map[int64]*pendingCall
	subs     map[string]*Subscription
	handlers map[string]Handler
	ended    bool  // set by the reader when it stops, under mu
	cause    error // the reason the client closed the connection itself, if it did
	err      error // the connection's final error, set when ended is

	// quit is closed when Close begins or the idle timeout fires, so that
	// a reader waiting for a slow consumer stops waiting.
	quit     chan struct{}
	quitOnce sync.Once

	done      chan struct{} // closed when the reader has torn everything down
	handlerWG sync.WaitGroup
	// peer serves the requests and notifications that the sidecar sends
	// for the application, with the handlers of Handle.
	peer       *rpc.Peer
	closeOnce  sync.Once
	closeErr   error
	idle       idleWatch
	lastBeatNS atomic.Int64 // unix nanoseconds of the last heartbeat
}

// Dial connects to the sidecar's websocket endpoint, for example
// ws://127.0.0.1:7070/v1/ws, and waits for the welcome notification. With
// Options.AuthMessage it then authenticates before returning.
//
// ctx bounds the upgrade, the wait for the welcome and the auth request,
// but not the connection's lifetime. A rejected upgrade returns a
// *HandshakeError.
func Dial(ctx context.Context, rawURL string, opts Options) (*Conn, error) {
	dialURL, header, err := prepareDial(rawURL, opts)
	if err != nil {
		return nil, err
	}

	ws, resp, err := websocket.Dial(ctx, dialURL, &websocket.DialOptions{
		HTTPHeader: header,
		HTTPClient: opts.HTTPClient,
	})
	if err != nil {
		if resp != nil && resp.StatusCode != http.StatusSwitchingProtocols {
			body, _ := io.ReadAll(resp.Body) // Dial keeps at most 1 KiB of it
			return nil, fmt.Errorf("dial %s: %w", redactURL(rawURL), newHandshakeError(resp.StatusCode, body))
		}
		return nil, fmt.Errorf("dial %s: %w", redactURL(rawURL), err)
	}

	c := newConn(ctx, ws, opts)
	go c.readLoop()

	select {
	case <-c.welcomed:
	case <-c.done:
		c.CloseNow()
		return nil, fmt.Errorf("dial %s: before the welcome notification: %w", redactURL(rawURL), c.Err())
	case <-ctx.Done():
		c.CloseNow()
		return nil, fmt.Errorf("dial %s: waiting for the welcome notification: %w", redactURL(rawURL), ctx.Err())
	}
	c.idle.start(c, opts.IdleTimeout, c.welcome.Heartbeat)

	if opts.AuthMessage {
		if _, err := c.Auth(ctx, opts.Token); err != nil {
			c.CloseNow()
			return nil, fmt.Errorf("dial %s: %w", redactURL(rawURL), err)
		}
	}
	return c, nil
}

// prepareDial checks the token options and returns the URL and headers of
// the upgrade request.
func prepareDial(rawURL string, opts Options) (string, http.Header, error) {
	if opts.TokenInQuery && opts.AuthMessage {
		return "", nil, errors.New("options TokenInQuery and AuthMessage are both set: choose one way to send the token")
	}
	if (opts.TokenInQuery || opts.AuthMessage) && opts.Token == "" {
		return "", nil, errors.New("option Token is empty, but TokenInQuery or AuthMessage is set: give the token to send")
	}

	header := opts.Header.Clone()
	if header == nil {
		header = http.Header{}
	}

	switch {
	case opts.Token == "" || opts.AuthMessage:
		return rawURL, header, nil
	case opts.TokenInQuery:
		u, err := url.Parse(rawURL)
		if err != nil {
			return "", nil, fmt.Errorf("parse URL %q: %w", rawURL, err)
		}
		query := u.Query()
		query.Set("access_token", opts.Token)
		u.RawQuery = query.Encode()
		return u.String(), header, nil
	default:
		header.Set("Authorization", "Bearer "+opts.Token)
		return rawURL, header, nil
	}
}

// redactURL returns rawURL without its query, which may hold a token.
func redactURL(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil {
		return rawURL
	}
	u.RawQuery = ""
	return u.String()
}

func newConn(ctx context.Context, ws *websocket.Conn, opts Options) *Conn {
	readLimit := opts.ReadLimit
	if readLimit <= 0 {
		readLimit = DefaultReadLimit
	}
	ws.SetReadLimit(readLimit)

	buffer := opts.EventBuffer
	if buffer <= 0 {
		buffer = DefaultEventBuffer
	}

	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}

	handlers := make(map[string]Handler, len(opts.Handlers))
	for method, h := range opts.Handlers {
		if h != nil {
			handlers[method] = h
		}
	}

	// The connection keeps ctx's values but not its deadline.
	lifetime, cancel := context.WithCancel(context.WithoutCancel(ctx))
	c := &Conn{
		ws:       ws,
		log:      log,
		buffer:   buffer,
		ctx:      lifetime,
		cancel:   cancel,
		welcomed: make(chan struct{}),
		pending:  make(map[int64]*pendingCall),
		subs:     make(map[string]*Subscription),
		handlers: handlers,
		quit:     make(chan struct{}),
		done:     make(chan struct{}),
	}
	c.peer = rpc.NewPeer(rpc.PeerConfig{Send: c.write, Logger: log})
	c.peer.SetPreparer(c.prepareIncoming)
	return c
}

// Welcome returns the welcome notification that Dial waited for.
func (c *Conn) Welcome() Welcome {
	return c.welcome
}

// LastHeartbeat returns when the last heartbeat notification arrived, or the
// zero time if none has.
func (c *Conn) LastHeartbeat() time.Time {
	ns := c.lastBeatNS.Load()
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns)
}

// Done returns a channel that is closed when the connection has ended, all
// pending calls have failed and all Events channels are closed.
func (c *Conn) Done() <-chan struct{} {
	return c.done
}

// Err returns nil while the connection is open. Once Done is closed, it
// returns why the connection ended: ErrClosed after Close, otherwise an
// error that matches ErrClosed and wraps the cause, such as the sidecar's
// close frame (see CloseStatus) or ErrIdleTimeout.
func (c *Conn) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Close closes the connection with the normal closure code 1000 and waits
// for the sidecar's close frame in reply, up to about 10 seconds in
// coder/websocket v1.8.15. It then waits for the reader and for running
// Handlers, which see their context cancelled. Pending calls fail with
// ErrClosed.
//
// Close returns nil when the connection had already ended. Further calls
// return the first call's result.
func (c *Conn) Close() error {
	return c.shutdown(true)
}

// CloseNow closes the connection without the closing handshake, then waits
// as Close does.
func (c *Conn) CloseNow() error {
	return c.shutdown(false)
}

func (c *Conn) shutdown(handshake bool) error {
	c.closeOnce.Do(func() {
		c.setCause(ErrClosed)
		c.stopWaiting()

		var err error
		if handshake {
			err = c.ws.Close(websocket.StatusNormalClosure, "")
		} else {
			err = c.ws.CloseNow()
		}
		if err != nil && !errors.Is(err, net.ErrClosed) {
			c.closeErr = fmt.Errorf("close: %w", err)
		}

		c.cancel()
		<-c.done
		c.handlerWG.Wait()
		c.peer.Wait()
	})
	return c.closeErr
}

// setCause records why the client closes the connection, unless the
// connection has already ended or a cause is set.
func (c *Conn) setCause(cause error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.ended && c.cause == nil {
		c.cause = cause
	}
}

func (c *Conn) stopWaiting() {
	c.quitOnce.Do(func() { close(c.quit) })
}

// write sends one text message. It uses the connection's context, so a
// write in progress ends only when it completes or the connection ends.
func (c *Conn) write(msg []byte) error {
	return c.ws.Write(c.ctx, websocket.MessageText, msg)
}
