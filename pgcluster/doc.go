// Package pgcluster runs a throwaway PostgreSQL cluster from the local
// initdb and postgres binaries, for the sidecar's dev command and for
// integration tests.
//
// A tour:
//
//   - FindBinaries locates initdb and postgres: PATH, then pg_config
//     --bindir, then the highest version under /usr/lib/postgresql/*/bin.
//   - Start runs initdb in a new data directory (or reuses an initialized
//     one), starts postgres as a direct child process on a loopback port and
//     returns once it accepts connections.
//   - Cluster.URL builds connection URLs for the superuser postgres, which
//     needs no password (trust authentication).
//   - Cluster.Stop, Kill and Restart shut the server down cleanly, crash it,
//     and start it again on the same port and data directory.
//   - Cluster.Close stops the server and removes what Start created.
//
// When the calling process runs as root, initdb and postgres run as the
// account postgres, or nobody if that does not exist, because initdb
// rejects root. The server is started with the Linux parent-death signal
// set to SIGKILL, so it dies with the process that started it, even when
// that process never gets to call Close.
package pgcluster
