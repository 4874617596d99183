package rpc_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/pgsidecar/sidecar/rpc"
)

func ExamplePeer() {
	// Two channels stand in for the two directions of a websocket
	// connection. Each side has one read loop that passes every message
	// to its Peer's Receive.
	toServer := make(chan []byte, 16)
	toClient := make(chan []byte, 16)
	server := rpc.NewPeer(rpc.PeerConfig{Send: func(msg []byte) error { toClient <- msg; return nil }})
	client := rpc.NewPeer(rpc.PeerConfig{Send: func(msg []byte) error { toServer <- msg; return nil }})

	type addParams struct {
		A int `json:"a"`
		B int `json:"b"`
	}
	rpc.Register(server, "add", func(_ context.Context, p addParams) (int, error) {
		return p.A + p.B, nil
	})

	ctx := context.Background()
	var loops sync.WaitGroup
	readLoop := func(p *rpc.Peer, in <-chan []byte) {
		for msg := range in {
			p.Receive(ctx, msg)
		}
		p.Close(io.EOF)
		p.Wait()
	}
	loops.Go(func() { readLoop(server, toServer) })
	loops.Go(func() { readLoop(client, toClient) })

	var sum int
	err := client.Call(ctx, "add", addParams{A: 2, B: 3}, &sum)
	fmt.Println(sum, err)

	err = client.Call(ctx, "add", map[string]string{"a": "two"}, &sum)
	var rerr *rpc.Error
	if errors.As(err, &rerr) {
		fmt.Println(rerr.Code, rerr.Message)
	}

	close(toServer)
	close(toClient)
	loops.Wait()
	// Output:
	// 5 <nil>
	// -32602 invalid params: "a" must be an integer
}
