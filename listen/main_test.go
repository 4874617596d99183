package listen

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/pgsidecar/sidecar/pgcluster"
)

// cluster is the Postgres server shared by this package's database tests,
// or nil when it could not start. clusterErr is then the start error.
var (
	cluster    *pgcluster.Cluster
	clusterErr error
)

func TestMain(m *testing.M) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	cluster, clusterErr = pgcluster.Start(ctx, pgcluster.Options{})
	cancel()

	if clusterErr != nil {
		// A CI run that silently skips the database tests covers less than
		// it claims, so it fails instead.
		if os.Getenv("CI") == "true" {
			fmt.Fprintf(os.Stderr, "listen tests: start postgres: %v\n", clusterErr)
			os.Exit(1)
		}
		fmt.Fprintf(os.Stderr, "listen tests: database tests skipped: start postgres: %v\n", clusterErr)
	}

	code := m.Run()

	if cluster != nil {
		if err := cluster.Close(); err != nil {
			fmt.Fprintf(os.Stderr, "listen tests: close postgres: %v\n", err)
		}
	}

	if code == 0 {
		if err := checkNoLeaks(10 * time.Second); err != nil {
			fmt.Fprintf(os.Stderr, "listen tests: %v\n", err)
			os.Exit(1)
		}
	}
}

// checkNoLeaks waits up to timeout for goroutines running Listener or pgx
// code to end, and returns an error listing the ones that remain.
func checkNoLeaks(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		leaked := leakedGoroutines()
		if len(leaked) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return errors.New("leaked goroutines:\n\n" + strings.Join(leaked, "\n\n"))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func leakedGoroutines() []string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]

	var leaked []string
	for g := range strings.SplitSeq(string(buf), "\n\n") {
		if strings.Contains(g, "listen.(*Listener)") || strings.Contains(g, "github.com/jackc/pgx") {
			leaked = append(leaked, g)
		}
	}
	return leaked
}
