package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"
)

// proxyDialTimeout bounds the proxy's connect to its target.
const proxyDialTimeout = 5 * time.Second

// proxy forwards TCP connections from a loopback port to a target address.
// Cut makes it stop forwarding in both directions without closing
// anything, as a network that silently drops packets does: both ends see
// silence, not an error. Its methods are safe for concurrent use.
//
// The proxy owns the goroutines of its accept loop and of every forwarded
// connection. Close stops them and waits for them.
type proxy struct {
	ln     net.Listener
	target string
	log    *slog.Logger

	mu      sync.Mutex
	resumed chan struct{} // non-nil during a cut, closed when it ends
	conns   map[net.Conn]struct{}
	closed  bool

	done chan struct{} // closed by Close
	wg   sync.WaitGroup
}

// newProxy listens on a free port of 127.0.0.1 and forwards every
// connection to target. logger may be nil.
func newProxy(target string, logger *slog.Logger) (*proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("proxy to %s: listen: %w", target, err)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}

	p := &proxy{
		ln:     ln,
		target: target,
		log:    logger,
		conns:  make(map[net.Conn]struct{}),
		done:   make(chan struct{}),
	}
	p.wg.Go(p.acceptLoop)
	return p, nil
}

// Addr returns the proxy's address, 127.0.0.1:PORT.
func (p *proxy) Addr() string { return p.ln.Addr().String() }

// Cut stops forwarding until the returned function is called. Bytes read
// during the cut are held and forwarded afterwards, as TCP retransmits
// after a network outage. New connections are accepted but carry nothing
// until the cut ends. A second Cut during a cut is a no-op whose resume
// function does nothing.
func (p *proxy) Cut() (resume func()) {
	p.mu.Lock()
	defer p.mu.Unlock()

	if p.resumed != nil {
		return func() {}
	}
	ch := make(chan struct{})
	p.resumed = ch
	return func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		if p.resumed == ch {
			close(ch)
			p.resumed = nil
		}
	}
}

// Close stops accepting, closes every forwarded connection and waits for
// the proxy's goroutines. It ends a cut.
func (p *proxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	close(p.done)
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()

	err := p.ln.Close()
	p.wg.Wait()
	return err
}

func (p *proxy) acceptLoop() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				p.log.Warn("proxy accept failed", "target", p.target, "err", err)
			}
			return
		}
		p.wg.Go(func() { p.forward(c) })
	}
}

// forward connects client to the target and copies both ways until either
// side closes.
func (p *proxy) forward(client net.Conn) {
	upstream, err := net.DialTimeout("tcp", p.target, proxyDialTimeout)
	if err != nil {
		p.log.Debug("proxy dial failed", "target", p.target, "err", err)
		client.Close()
		return
	}
	if !p.track(client, upstream) {
		return
	}
	defer p.untrack(client, upstream)

	var wg sync.WaitGroup
	wg.Go(func() { p.copy(upstream, client) })
	wg.Go(func() { p.copy(client, upstream) })
	wg.Wait()
}

// track registers the pair so that Close can end it, or closes both and
// returns false when the proxy is already closed.
func (p *proxy) track(conns ...net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		for _, c := range conns {
			c.Close()
		}
		return false
	}
	for _, c := range conns {
		p.conns[c] = struct{}{}
	}
	return true
}

func (p *proxy) untrack(conns ...net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range conns {
		c.Close()
		delete(p.conns, c)
	}
}

// copy forwards src to dst, waiting out cuts before each write. When
// either side fails it closes both, which also ends the copy in the other
// direction.
func (p *proxy) copy(dst, src net.Conn) {
	defer dst.Close()
	defer src.Close()

	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if !p.waitForward() {
				return
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// waitForward blocks while a cut lasts. It returns false when the proxy
// is closed.
func (p *proxy) waitForward() bool {
	p.mu.Lock()
	resumed := p.resumed
	p.mu.Unlock()
	if resumed == nil {
		return true
	}

	select {
	case <-resumed:
		return true
	case <-p.done:
		return false
	}
}
