package main

import (
	"bufio"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"testing"
	"time"
)

func newTestRand() *rand.Rand { return rand.New(rand.NewPCG(1, 2)) }

// startEcho runs a TCP server on loopback that echoes every line back.
func startEcho(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	return ln.Addr().String()
}

// dialProxy connects to p and returns the connection and a line reader.
func dialProxy(t *testing.T, p *proxy) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, bufio.NewReader(c)
}

func roundTrip(t *testing.T, c net.Conn, r *bufio.Reader, line string) {
	t.Helper()
	if _, err := io.WriteString(c, line+"\n"); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := r.ReadString('\n')
	if err != nil {
		t.Fatalf("read echo of %q: %v", line, err)
	}
	if got != line+"\n" {
		t.Errorf("echo = %q, want %q", got, line+"\n")
	}
}

func TestProxyForwards(t *testing.T) {
	p, err := newProxy(startEcho(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()

	c, r := dialProxy(t, p)
	roundTrip(t, c, r, "hello")
	roundTrip(t, c, r, "again")
}

func TestProxyCutHoldsBytesUntilResume(t *testing.T) {
	p, err := newProxy(startEcho(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	c, r := dialProxy(t, p)
	roundTrip(t, c, r, "before")

	resume := p.Cut()
	if _, err := io.WriteString(c, "during\n"); err != nil {
		t.Fatal(err)
	}
	// Nothing may arrive while the cut lasts. The deadline only bounds
	// how long the test looks. The outcome is that no byte arrived.
	c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if got, err := r.ReadString('\n'); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read during the cut = %q, %v, want a deadline error", got, err)
	}

	resume()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := r.ReadString('\n')
	if err != nil || got != "during\n" {
		t.Errorf("read after the cut = %q, %v, want %q", got, err, "during\n")
	}
}

func TestProxyCutAcceptsNewConnections(t *testing.T) {
	p, err := newProxy(startEcho(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()

	resume := p.Cut()
	c, r := dialProxy(t, p)
	if _, err := io.WriteString(c, "queued\n"); err != nil {
		t.Fatal(err)
	}
	resume()

	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := r.ReadString('\n')
	if err != nil || got != "queued\n" {
		t.Errorf("read after the cut = %q, %v, want %q", got, err, "queued\n")
	}
}

func TestProxyCloseEndsConnections(t *testing.T) {
	p, err := newProxy(startEcho(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	c, r := dialProxy(t, p)
	roundTrip(t, c, r, "hello")
	p.Cut() // Close must also end a cut

	if err := p.Close(); err != nil {
		t.Fatalf("Close() = %v", err)
	}

	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := r.ReadString('\n'); !errors.Is(err, io.EOF) {
		t.Errorf("read after Close = %v, want EOF", err)
	}
}
