package rpc_test

import (
	"fmt"

	"github.com/pgsidecar/sidecar/rpc"
)

func ExampleDecode() {
	msg, rpcErr := rpc.Decode([]byte(`{"jsonrpc":"2.0","id":7,"method":"subscribe","params":{"topics":"orders.*"}}`))
	if rpcErr != nil {
		fmt.Printf("%s\n", rpc.EncodeError(msg.ID, rpcErr))
		return
	}

	var params struct {
		Topics []string `json:"topics"`
	}
	if rpcErr := rpc.DecodeParams(msg.Params, &params); rpcErr != nil {
		fmt.Printf("%s\n", rpc.EncodeError(msg.ID, rpcErr))
		return
	}
	fmt.Printf("%s\n", rpc.EncodeResult(msg.ID, map[string]any{"topics": params.Topics}))
	// Output:
	// {"jsonrpc":"2.0","id":7,"error":{"code":-32602,"message":"invalid params: \"topics\" must be an array of strings"}}
}

func ExampleEncodeNotification() {
	fmt.Printf("%s\n", rpc.EncodeNotification("heartbeat", nil))
	// Output:
	// {"jsonrpc":"2.0","method":"heartbeat"}
}
