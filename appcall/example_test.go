package appcall_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"

	"github.com/pgsidecar/sidecar/appcall"
)

func ExampleForwarder_Forward() {
	// The application greets the subject of every call.
	application := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			ID json.RawMessage `json:"id"`
		}
		_ = json.NewDecoder(r.Body).Decode(&req)
		_, _ = fmt.Fprintf(w, `{"jsonrpc":"2.0","id":%s,"result":{"hello":%q}}`, req.ID, r.Header.Get(appcall.HeaderSubject))
	}))
	defer application.Close()

	f, err := appcall.New(appcall.Config{URL: application.URL})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer f.Close()

	result, rerr := f.Forward(context.Background(), appcall.Call{
		ClientID: "c-1",
		Subject:  "alice",
		Method:   "greet",
		ID:       json.RawMessage(`1`),
	})
	if rerr != nil {
		fmt.Println(rerr.Message)
		return
	}
	fmt.Printf("%s\n", result)
	// Output:
	// {"hello":"alice"}
}
