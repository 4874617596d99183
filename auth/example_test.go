package auth_test

import (
	"fmt"
	"time"

	"github.com/pgsidecar/sidecar/auth"
	"github.com/pgsidecar/sidecar/topic"
)

func ExampleVerifier_Verify() {
	secret := []byte("a secret of at least 32 bytes....")
	token, err := auth.Sign(secret, "user-1", auth.Realtime{Subscribe: []string{"orders.>"}}, time.Hour)
	if err != nil {
		panic(err)
	}

	verifier, err := auth.NewVerifier(auth.Config{HS256Secret: secret})
	if err != nil {
		panic(err)
	}
	claims, err := verifier.Verify(token)
	if err != nil {
		panic(err)
	}

	fmt.Println(claims.Subject)
	fmt.Println(claims.CanSubscribe(topic.MustParse("orders.*")))
	fmt.Println(claims.CanSubscribe(topic.MustParse(">")))
	// Output:
	// user-1
	// true
	// false
}
