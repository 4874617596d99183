package main

import (
	"context"
	"encoding/json"

	"github.com/pgsidecar/sidecar/appcall"
	"github.com/pgsidecar/sidecar/rpc"
)

// handler runs one application method. The sidecar encodes its result as JSON.
type handler func(ctx context.Context, c appcall.Call) (any, *rpc.Error)

// methods is the application's table of methods, keyed by name without the
// "app." prefix. It implements server.Application, so the sidecar calls it
// directly instead of posting to an HTTP endpoint. It is read-only after
// construction and therefore safe for concurrent use.
type methods map[string]handler

func (m methods) Forward(ctx context.Context, c appcall.Call) (json.RawMessage, *rpc.Error) {
	handle, ok := m[c.Method]
	if !ok {
		return nil, rpc.MethodNotFound("app." + c.Method)
	}

	result, rpcErr := handle(ctx, c)
	if rpcErr != nil {
		return nil, rpcErr
	}

	raw, err := json.Marshal(result)
	if err != nil {
		return nil, rpc.Errorf(rpc.CodeInternal, "encoding the result of app.%s failed: %v", c.Method, err)
	}
	return raw, nil
}

// typed adapts a function of decoded params P to a handler. Params that do
// not decode into P are rejected with -32602. Absent params leave P at its
// zero value.
func typed[P, R any](f func(ctx context.Context, c appcall.Call, params P) (R, *rpc.Error)) handler {
	return func(ctx context.Context, c appcall.Call) (any, *rpc.Error) {
		var params P
		if len(c.Params) > 0 {
			if err := json.Unmarshal(c.Params, &params); err != nil {
				return nil, rpc.InvalidParams("app.%s: %v", c.Method, err)
			}
		}
		return f(ctx, c, params)
	}
}

// identity is the result of app.whoami.
type identity struct {
	Subject  string `json:"subject"`
	ClientID string `json:"client_id"`
}

// newMethods returns the methods this application offers to clients.
func newMethods() methods {
	return methods{
		// app.add takes [a, b] and returns a + b.
		"add": typed(func(_ context.Context, _ appcall.Call, operands []int) (int, *rpc.Error) {
			if len(operands) != 2 {
				return 0, rpc.InvalidParams("app.add takes two integers [a, b], got %d values", len(operands))
			}
			return operands[0] + operands[1], nil
		}),

		// app.whoami returns the caller's token subject and connection id.
		"whoami": typed(func(_ context.Context, c appcall.Call, _ json.RawMessage) (identity, *rpc.Error) {
			return identity{Subject: c.Subject, ClientID: c.ClientID}, nil
		}),
	}
}
