package client_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/pgsidecar/sidecar/client"
)

// This example subscribes to all orders and prints each event until the
// connection ends, then reports why it ended.
func Example() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	conn, err := client.Dial(ctx, "ws://127.0.0.1:7070/v1/ws", client.Options{
		Token: os.Getenv("SIDECAR_TOKEN"),
	})
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	fmt.Println("connected as", conn.Welcome().ClientID)

	sub, err := conn.Subscribe(ctx, []string{"orders.>"})
	if err != nil {
		log.Fatal(err)
	}

	for ev := range sub.Events() {
		fmt.Printf("%s #%d: %s\n", ev.Topic, ev.ID, ev.Data)
	}
	fmt.Println("subscription ended:", sub.Err(), "close code:", client.CloseStatus(conn.Err()))
}

// This example resumes after the last event id a previous session saw.
// When that history is gone, the application must reload its state.
func ExampleWithSince() {
	ctx := context.Background()
	conn, err := client.Dial(ctx, "ws://127.0.0.1:7070/v1/ws", client.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()

	lastID, epoch := int64(1042), "saved-epoch"
	sub, err := conn.Subscribe(ctx, []string{"orders.*"}, client.WithSince(lastID), client.WithEpoch(epoch))

	var rpcErr *client.RPCError
	if errors.As(err, &rpcErr) && rpcErr.Code == client.CodeHistoryExpired {
		// Reload from the application, then subscribe without WithSince.
		return
	}
	if err != nil {
		log.Fatal(err)
	}
	_ = sub
}
