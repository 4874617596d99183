package pgtest

import (
	"errors"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/pgsidecar/sidecar/db/migrations"
	"github.com/pgsidecar/sidecar/pgcluster"
)

// clusterDatabase is the migrated database that NewCluster creates.
const clusterDatabase = "sidecar"

// Cluster is a dedicated local cluster from NewCluster. The embedded
// cluster stops, kills and restarts it. URL is the migrated database; the
// embedded Cluster.URL method builds URLs of other databases.
type Cluster struct {
	*pgcluster.Cluster
	URL string
}

// NewCluster starts a dedicated local cluster with PostgreSQL's default
// durability settings, for tests that stop or crash the server, and
// creates a migrated database in it. The test's cleanup closes the cluster
// and removes its files. It does not need Main and uses the local
// binaries whatever SIDECAR_TEST_PG is set to. Without the binaries it skips the
// test, or fails it when CI=true.
func NewCluster(t testing.TB) *Cluster {
	t.Helper()

	if _, err := pgcluster.FindBinaries(); errors.Is(err, pgcluster.ErrBinariesNotFound) {
		if inCI() {
			t.Fatalf("pgtest: %v", err)
		}
		t.Skipf("pgtest: %v", err)
	}

	c, err := pgcluster.Start(t.Context(), pgcluster.Options{Durable: true})
	if err != nil {
		t.Fatalf("pgtest: start cluster: %v", err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("pgtest: close cluster: %v", err)
		}
	})

	conn, err := pgx.Connect(t.Context(), c.URL("postgres"))
	if err != nil {
		t.Fatalf("pgtest: connect to cluster: %v", err)
	}
	_, err = conn.Exec(t.Context(), "CREATE DATABASE "+quote(clusterDatabase))
	conn.Close(t.Context())
	if err != nil {
		t.Fatalf("pgtest: create database %s: %v", clusterDatabase, err)
	}

	url := c.URL(clusterDatabase)
	if err := migrations.Up(t.Context(), url, migrationLogger()); err != nil {
		t.Fatalf("pgtest: migrate database %s: %v", clusterDatabase, err)
	}
	return &Cluster{Cluster: c, URL: url}
}
