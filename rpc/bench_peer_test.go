package rpc_test

import (
	"context"
	"testing"

	"github.com/pgsidecar/sidecar/rpc"
)

// BenchmarkPeerCall measures one round trip of a trivial call over the
// in-memory pipe: encode, Receive on both sides, one handler goroutine and
// the decode of the result.
func BenchmarkPeerCall(b *testing.B) {
	p := newPipe(b, rpc.PeerConfig{}, rpc.PeerConfig{})
	registerEcho(p.b)
	ctx := context.Background()
	params := echoParams{N: 1}

	b.ReportAllocs()
	for b.Loop() {
		var got int
		if err := p.a.Call(ctx, "echo", params, &got); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkPeerCallParallel measures trivial calls from GOMAXPROCS
// goroutines over one pipe.
func BenchmarkPeerCallParallel(b *testing.B) {
	p := newPipe(b, rpc.PeerConfig{}, rpc.PeerConfig{})
	registerEcho(p.b)
	ctx := context.Background()
	params := echoParams{N: 1}

	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			var got int
			if err := p.a.Call(ctx, "echo", params, &got); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
