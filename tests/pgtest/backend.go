package pgtest

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/ory/dockertest/v3"
	"github.com/ory/dockertest/v3/docker"

	"github.com/pgsidecar/sidecar/pgcluster"
)

// Environment variables that choose the server.
const (
	// backendEnv is auto (the default), docker, local or url.
	backendEnv = "SIDECAR_TEST_PG"

	// urlEnv names an existing server for the url backend. The role needs
	// CREATEDB. It is deliberately not DATABASE_URL: the harness creates and
	// drops databases, and must never aim at an application database by
	// accident.
	urlEnv = "SIDECAR_TEST_DATABASE_URL"
)

// The backend names, as Backend returns them.
const (
	backendDocker = "docker"
	backendLocal  = "local"
	backendURL    = "url"
	backendNone   = "none"
)

// server is the running PostgreSQL server of one test binary.
type server struct {
	backend string

	// adminURL is a URL of a maintenance database, with a role that may
	// create databases.
	adminURL string

	// namePrefix starts the name of every database this run creates. It is
	// empty for servers that the run owns, and a per-run id for the url
	// backend, whose server other runs share.
	namePrefix string

	// close stops the server, or does nothing for the url backend.
	close func() error
}

// errNoBackend is wrapped when auto-detection found no server to use.
var errNoBackend = errors.New("no PostgreSQL backend available")

// startServer starts or connects to the server chosen by SIDECAR_TEST_PG.
// A backend named there that fails is an error. In auto mode, each failure
// moves on to the next backend, and the error wraps errNoBackend when none
// is left.
func startServer(ctx context.Context) (*server, error) {
	choice := os.Getenv(backendEnv)
	switch choice {
	case "", "auto":
		return startAuto(ctx)
	case backendDocker:
		return startDocker(ctx)
	case backendLocal:
		return startLocal(ctx)
	case backendURL:
		return useURL()
	default:
		return nil, fmt.Errorf("invalid %s=%q: use auto, docker, local or url", backendEnv, choice)
	}
}

// startAuto tries a Docker engine, then local binaries, then
// SIDECAR_TEST_DATABASE_URL.
func startAuto(ctx context.Context) (*server, error) {
	var reasons []string

	if err := pingDocker(ctx); err != nil {
		reasons = append(reasons, fmt.Sprintf("docker: no engine (%v)", err))
	} else if s, err := startDocker(ctx); err != nil {
		reasons = append(reasons, "docker: "+err.Error())
	} else {
		return s, nil
	}

	if _, err := pgcluster.FindBinaries(); err != nil {
		reasons = append(reasons, "local: "+err.Error())
	} else if s, err := startLocal(ctx); err != nil {
		reasons = append(reasons, "local: "+err.Error())
	} else {
		return s, nil
	}

	if os.Getenv(urlEnv) == "" {
		reasons = append(reasons, "url: "+urlEnv+" is not set")
	} else if s, err := useURL(); err != nil {
		reasons = append(reasons, "url: "+err.Error())
	} else {
		return s, nil
	}

	return nil, fmt.Errorf("%w:\n  %s", errNoBackend, strings.Join(reasons, "\n  "))
}

// pingDocker checks that a Docker engine responds. An installed docker
// command proves nothing, because machines often have the client without
// an engine.
func pingDocker(ctx context.Context) error {
	pool, err := dockertest.NewPool("")
	if err != nil {
		return err
	}

	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	return pool.Client.PingWithContext(ctx)
}

// startDocker runs the postgres:15 image, the major version CI tests with,
// without durability settings, since the container is thrown away.
//
// NOTE: not yet run against a Docker engine, so the image pull, the port
// lookup and the readiness wait are unverified.
func startDocker(ctx context.Context) (*server, error) {
	pool, err := dockertest.NewPool("")
	if err != nil {
		return nil, fmt.Errorf("create docker client: %w", err)
	}
	if err := pingDocker(ctx); err != nil {
		return nil, fmt.Errorf("ping docker engine: %w", err)
	}

	res, err := pool.RunWithOptions(&dockertest.RunOptions{
		Repository: "postgres",
		Tag:        "15",
		Env:        []string{"POSTGRES_PASSWORD=postgres"},
		Cmd: []string{"postgres",
			"-c", "fsync=off",
			"-c", "synchronous_commit=off",
			"-c", "full_page_writes=off",
			"-c", "max_connections=200",
		},
	}, func(hc *docker.HostConfig) {
		hc.AutoRemove = true
		hc.RestartPolicy = docker.NeverRestart()
	})
	if err != nil {
		return nil, fmt.Errorf("run postgres:15 container: %w", err)
	}

	purge := func() error { return pool.Purge(res) }

	// The engine kills the container after an hour even if this process
	// dies without purging it.
	if err := res.Expire(3600); err != nil {
		return nil, errors.Join(fmt.Errorf("set container expiry: %w", err), purge())
	}

	adminURL := fmt.Sprintf("postgres://postgres:postgres@%s/postgres?sslmode=disable", res.GetHostPort("5432/tcp"))
	pool.MaxWait = 2 * time.Minute
	err = pool.Retry(func() error {
		conn, err := pgx.Connect(ctx, adminURL)
		if err != nil {
			return err
		}
		return conn.Close(ctx)
	})
	if err != nil {
		return nil, errors.Join(fmt.Errorf("wait for postgres in container: %w", err), purge())
	}

	return &server{backend: backendDocker, adminURL: adminURL, close: purge}, nil
}

// startLocal starts a throwaway cluster from the local binaries, without
// durability settings. It must run on TestMain's goroutine, which is not
// locked to an OS thread, for the parent-death signal to work.
func startLocal(ctx context.Context) (*server, error) {
	c, err := pgcluster.Start(ctx, pgcluster.Options{})
	if err != nil {
		return nil, err
	}
	return &server{backend: backendLocal, adminURL: c.URL("postgres"), close: c.Close}, nil
}

// useURL uses the server named by SIDECAR_TEST_DATABASE_URL.
func useURL() (*server, error) {
	raw := os.Getenv(urlEnv)
	if raw == "" {
		return nil, fmt.Errorf("%s=%s needs %s, a postgres:// URL whose role may create databases", backendEnv, backendURL, urlEnv)
	}

	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		return nil, fmt.Errorf("invalid %s: want a postgres:// URL, not a key=value connection string", urlEnv)
	}

	return &server{
		backend:    backendURL,
		adminURL:   raw,
		namePrefix: "pgtest_" + randomHex(4) + "_",
		close:      func() error { return nil },
	}, nil
}

// databaseURL returns adminURL with its database replaced by name.
func (s *server) databaseURL(name string) string {
	u, err := url.Parse(s.adminURL)
	if err != nil {
		// startServer built or validated adminURL.
		panic(fmt.Sprintf("pgtest: parse admin URL: %v", err))
	}
	u.Path = "/" + name
	u.RawPath = ""
	return u.String()
}

// describe returns the backend and address for the start-up line, without
// the password.
func (s *server) describe() string {
	u, err := url.Parse(s.adminURL)
	if err != nil {
		return s.backend
	}
	return fmt.Sprintf("%s backend at %s", s.backend, u.Host)
}
