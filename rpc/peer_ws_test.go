package rpc_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/coder/websocket"

	"github.com/pgsidecar/sidecar/rpc"
)

// wsLink carries one Peer's messages over a websocket connection, as the
// sidecar's endpoint and the Go client do: the goroutine in run is the only
// reader, and one writer goroutine is the only caller of Write.
type wsLink struct {
	conn  *websocket.Conn
	queue chan []byte
	ended chan struct{} // closed when the read loop has ended
}

func newWSLink(conn *websocket.Conn) *wsLink {
	return &wsLink{conn: conn, queue: make(chan []byte, 256), ended: make(chan struct{})}
}

// send is the Peer's Send: it queues msg for the writer.
func (l *wsLink) send(msg []byte) error {
	select {
	case l.queue <- msg:
		return nil
	case <-l.ended:
		return net.ErrClosed
	}
}

// run reads messages into peer until the connection ends, then closes
// peer with the read error and waits for the writer and peer's handlers.
// It returns the read error.
func (l *wsLink) run(ctx context.Context, peer *rpc.Peer) error {
	var writer sync.WaitGroup
	writer.Go(func() {
		for {
			select {
			case msg := <-l.queue:
				if err := l.conn.Write(ctx, websocket.MessageText, msg); err != nil {
					return
				}
			case <-l.ended:
				return
			}
		}
	})

	var err error
	for {
		var msg []byte
		_, msg, err = l.conn.Read(ctx)
		if err != nil {
			break
		}
		peer.Receive(ctx, msg)
	}

	peer.Close(err)
	close(l.ended)
	writer.Wait()
	peer.Wait()
	return err
}

// wsPeers are the two ends of a real websocket connection.
type wsPeers struct {
	server, client *rpc.Peer
	clientConn     *websocket.Conn
	serverDone     chan error // the server's read error, once its loop ended
	clientDone     chan error // the client's read error, once its loop ended
}

// newWSPeers connects a client Peer to a server Peer through an
// httptest.Server. setup functions register handlers before the read
// loops start. The cleanup closes the connection and waits for both loops.
func newWSPeers(t *testing.T, setupServer, setupClient func(*rpc.Peer)) *wsPeers {
	t.Helper()

	// The loops use their own ctx, because r.Context() is not cancelled
	// when a hijacked connection ends.
	ctx, cancel := context.WithCancel(context.Background())
	w := &wsPeers{serverDone: make(chan error, 1), clientDone: make(chan error, 1)}
	serverReady := make(chan *rpc.Peer, 1)

	srv := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		conn, err := websocket.Accept(rw, r, nil)
		if err != nil {
			t.Errorf("accept: %v", err)
			return
		}
		link := newWSLink(conn)
		peer := rpc.NewPeer(rpc.PeerConfig{Send: link.send})
		setupServer(peer)
		serverReady <- peer
		w.serverDone <- link.run(ctx, peer)
	}))

	conn, _, err := websocket.Dial(t.Context(), "ws"+strings.TrimPrefix(srv.URL, "http"), nil)
	if err != nil {
		cancel()
		srv.Close()
		t.Fatalf("dial: %v", err)
	}
	link := newWSLink(conn)
	w.client = rpc.NewPeer(rpc.PeerConfig{Send: link.send})
	w.clientConn = conn
	setupClient(w.client)
	go func() { w.clientDone <- link.run(ctx, w.client) }()
	w.server = receiveWithin(t, serverReady, "accepted connection")

	t.Cleanup(func() {
		_ = conn.Close(websocket.StatusNormalClosure, "")
		receiveWithin(t, w.clientDone, "end of the client's read loop")
		receiveWithin(t, w.serverDone, "end of the server's read loop")
		cancel()
		srv.Close()
	})
	return w
}

func TestPeerOverWebsocket(t *testing.T) {
	w := newWSPeers(t,
		func(server *rpc.Peer) {
			registerEcho(server)
			rpc.Register(server, "greet", func(ctx context.Context, _ struct{}) (string, error) {
				var name string
				err := server.Call(ctx, "name", nil, &name)
				return "hello, " + name, err
			})
		},
		func(client *rpc.Peer) {
			rpc.Register(client, "name", func(context.Context, struct{}) (string, error) {
				return "gopher", nil
			})
		})

	// Both sides call at once, and greet calls back into the client.
	const calls = 200
	errs := make(chan error, 3*calls)
	var wg sync.WaitGroup
	for i := range calls {
		wg.Go(func() {
			var got int
			if err := w.client.Call(t.Context(), "echo", echoParams{N: i}, &got); err != nil || got != i {
				errs <- fmt.Errorf("client Call(echo, %d) = %d, %v", i, got, err)
			}
		})
		wg.Go(func() {
			var got string
			if err := w.client.Call(t.Context(), "greet", nil, &got); err != nil || got != "hello, gopher" {
				errs <- fmt.Errorf("client Call(greet) = %q, %v, want hello, gopher", got, err)
			}
		})
		wg.Go(func() {
			var got string
			if err := w.server.Call(t.Context(), "name", nil, &got); err != nil || got != "gopher" {
				errs <- fmt.Errorf("server Call(name) = %q, %v, want gopher", got, err)
			}
		})
	}
	wg.Wait()
	close(errs)

	for err := range errs {
		t.Error(err)
	}
}

func TestPeerOverWebsocketClose(t *testing.T) {
	started := make(chan struct{})
	serverCause := make(chan error, 1)
	w := newWSPeers(t,
		func(server *rpc.Peer) {
			server.Handle("hold", func(ctx context.Context, _ json.RawMessage) (any, error) {
				close(started)
				<-ctx.Done()
				serverCause <- context.Cause(ctx)
				return nil, ctx.Err()
			})
		},
		func(*rpc.Peer) {})

	callErr := make(chan error, 1)
	go func() { callErr <- w.client.Call(t.Context(), "hold", nil, nil) }()
	receiveWithin(t, started, "start of the server's handler")

	if err := w.clientConn.Close(websocket.StatusGoingAway, "page closed"); err != nil {
		t.Fatalf("close the client connection: %v", err)
	}

	err := receiveWithin(t, callErr, "failed call")
	if !errors.Is(err, rpc.ErrClosed) {
		t.Errorf("pending call after the client closed = %v, want one that wraps rpc.ErrClosed", err)
	}

	cause := receiveWithin(t, serverCause, "cancelled server handler")
	if !errors.Is(cause, rpc.ErrClosed) {
		t.Errorf("context.Cause of the server's handler = %v, want one that wraps rpc.ErrClosed", cause)
	}
	if got := websocket.CloseStatus(cause); got != websocket.StatusGoingAway {
		t.Errorf("close status in the server's handler cause = %v, want %v", got, websocket.StatusGoingAway)
	}
}
