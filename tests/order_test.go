package tests

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/pgsidecar/sidecar/client"
	"github.com/pgsidecar/sidecar/tests/pgtest"
)

// TestConcurrentWritersResumeExactly has writers publish and commit in
// random order, some rolling back, one committing 2,000 events at a time,
// and checks that the live stream has
// increasing ids with exactly the committed events, and that resuming after
// any seen id yields exactly the rest.
func TestConcurrentWritersResumeExactly(t *testing.T) {
	db := pgtest.NewDatabase(t)
	sc := startSidecar(t, db)
	conn := dial(t, sc)
	live := subscribe(t, conn, []string{"w.>"})

	const writers, txPerWriter = 6, 30
	var mu sync.Mutex
	committed := map[string]bool{}

	var wg sync.WaitGroup
	for w := range writers {
		sql := connect(t, db)
		wg.Go(func() {
			ctx := context.Background()
			for n := range txPerWriter {
				tx, err := sql.Begin(ctx)
				if err != nil {
					t.Error(err)
					return
				}
				count := 1 + rand.IntN(4)
				var payloads []string
				for e := range count {
					p := fmt.Sprintf(`"w%d-t%d-e%d"`, w, n, e)
					if _, err := tx.Exec(ctx, `SELECT realtime.publish($1, $2)`, fmt.Sprintf("w.%d", w), p); err != nil {
						t.Error(err)
						return
					}
					payloads = append(payloads, p)
					time.Sleep(time.Duration(rand.IntN(2000)) * time.Microsecond)
				}
				if rand.IntN(5) == 0 {
					_ = tx.Rollback(ctx)
					continue
				}
				if err := tx.Commit(ctx); err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				for _, p := range payloads {
					committed[p] = true
				}
				mu.Unlock()
			}
		})
	}
	// Beside them, a writer of large transactions, one of them rolled back.
	bulk := connect(t, db)
	wg.Go(func() {
		ctx := context.Background()
		for n := range 3 {
			tx, err := bulk.Begin(ctx)
			if err != nil {
				t.Error(err)
				return
			}
			_, err = tx.Exec(ctx, `SELECT realtime.publish('w.bulk', to_jsonb(format('bulk-t%s-e%s', $1::int, i))) FROM generate_series(1, 2000) i`, n)
			if err != nil {
				t.Error(err)
				return
			}
			if n == 1 {
				_ = tx.Rollback(ctx)
				continue
			}
			if err := tx.Commit(ctx); err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			for i := 1; i <= 2000; i++ {
				committed[fmt.Sprintf(`"bulk-t%d-e%d"`, n, i)] = true
			}
			mu.Unlock()
		}
	})
	wg.Wait()
	if t.Failed() {
		return
	}

	var seen []client.Event
	for range len(committed) {
		ev := next(t, live)
		if len(seen) > 0 && ev.ID <= seen[len(seen)-1].ID {
			t.Fatalf("live id %d after %d: ids must increase", ev.ID, seen[len(seen)-1].ID)
		}
		if !committed[string(ev.Data)] {
			t.Fatalf("live event %s was not committed, or arrived twice", ev.Data)
		}
		delete(committed, string(ev.Data))
		seen = append(seen, ev)
	}
	expectQuiet(t, live, 300*time.Millisecond)

	for range 5 {
		from := rand.IntN(len(seen))
		resumed := subscribe(t, conn, []string{"w.>"}, client.WithSince(seen[from].ID))
		for i := from + 1; i < len(seen); i++ {
			if ev := next(t, resumed); ev.ID != seen[i].ID || string(ev.Data) != string(seen[i].Data) {
				t.Fatalf("resume after id %d: got id %d %s, want id %d %s", seen[from].ID, ev.ID, ev.Data, seen[i].ID, seen[i].Data)
			}
		}
		expectQuiet(t, resumed, 100*time.Millisecond)
	}
}
