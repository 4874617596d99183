package tests

import (
	"net"
	"sync"
	"testing"
)

// proxy forwards TCP connections from a loopback port to target. Cut drops
// every connection and refuses new ones until Restore, which lets a test
// take the sidecar's LISTEN connection away while Postgres stays up.
// BlackHole stops forwarding bytes without closing anything until Heal, as
// a silent network partition does.
type proxy struct {
	ln     net.Listener
	target string

	mu    sync.Mutex
	cut   bool
	conns map[net.Conn]bool
	// flowing is closed while bytes are forwarded. During a black hole it
	// is open, and every copier holds the bytes it has read until Heal or
	// Cut closes it.
	flowing chan struct{}
	wg      sync.WaitGroup
}

func startProxy(t testing.TB, target string) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	flowing := make(chan struct{})
	close(flowing)
	p := &proxy{ln: ln, target: target, conns: map[net.Conn]bool{}, flowing: flowing}
	p.wg.Go(p.accept)
	t.Cleanup(func() {
		ln.Close()
		p.Cut()
		p.wg.Wait()
	})
	return p
}

func (p *proxy) Addr() string { return p.ln.Addr().String() }

func (p *proxy) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		if p.cut {
			p.mu.Unlock()
			c.Close()
			continue
		}
		p.mu.Unlock()

		up, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.conns[c], p.conns[up] = true, true
		p.mu.Unlock()
		p.wg.Go(func() { p.forward(up, c); up.Close(); c.Close() })
		p.wg.Go(func() { p.forward(c, up); up.Close(); c.Close() })
	}
}

// forward copies src to dst until either fails. Each chunk read waits for
// the proxy to be flowing before it is written, so a black hole holds at
// most one chunk per direction and then lets TCP flow control stop the
// sender, as a partitioned network does.
func (p *proxy) forward(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			flowing := p.flowing
			p.mu.Unlock()
			<-flowing

			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// Cut closes every forwarded connection and refuses new ones. It ends a
// black hole, so that the held bytes meet closed connections.
func (p *proxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = true
	for c := range p.conns {
		c.Close()
	}
	clear(p.conns)
	p.healLocked()
}

// Restore accepts connections again.
func (p *proxy) Restore() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = false
}

// BlackHole stops forwarding bytes on every connection, open or new,
// without closing any, until Heal.
func (p *proxy) BlackHole() {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.flowing:
		p.flowing = make(chan struct{})
	default: // already black-holed
	}
}

// Heal forwards the held bytes and everything after them.
func (p *proxy) Heal() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.healLocked()
}

func (p *proxy) healLocked() {
	select {
	case <-p.flowing:
	default:
		close(p.flowing)
	}
}
