// Package pgtest gives tests a real, throwaway PostgreSQL database.
//
// Start hands each test a fresh database of its own on a server shared by
// the whole test binary: the server is started on first use from the
// machine's PostgreSQL binaries (initdb and postgres, found on PATH or
// under /usr/lib/postgresql/<version>/bin, the highest version first), in
// a temporary directory, on a free loopback port. When SAGA_TEST_PG_URL is
// set, the databases are made on that server instead. StartOwn starts a
// server for one test alone, always from the binaries, which the test may
// stop and restart. On Linux a server dies with its test binary, even one
// killed before its cleanup ran.
//
// When neither binaries nor SAGA_TEST_PG_URL are there, a test fails, so
// that no test passes without having run; with SAGA_TEST_PG_OPTIONAL=1 it
// is skipped instead.
//
// PostgreSQL refuses to run as root: as root, the server runs as the user
// postgres, else nobody, else a system user saga-pg made for it.
//
// A package that calls Start runs its tests through Wrap, which stops the
// shared server once they are done, before goleak looks for leaks:
//
//	func TestMain(m *testing.M) { goleak.VerifyTestMain(pgtest.Wrap(m)) }
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// Environment variables read by Start and StartOwn.
const (
	// EnvURL names a server to make the test databases on instead of
	// starting one, as a postgres:// URL whose user may create databases.
	EnvURL = "SAGA_TEST_PG_URL"
	// EnvOptional set to 1 makes a test skip, rather than fail, when there
	// is no PostgreSQL to run it on.
	EnvOptional = "SAGA_TEST_PG_OPTIONAL"
)

// Server is a test's database, on a server shared by the test binary
// (Start), on a server of the test's own (StartOwn), or on the server that
// SAGA_TEST_PG_URL names.
type Server struct {
	t   testing.TB
	url string
	db  string
	// c is the server the database is on when pgtest started it; own tells
	// whether the test owns it and so may stop it.
	c   *cluster
	own bool
}

// URL is the connection URL of the test's database, for pgx.Connect or
// pgxpool.New.
func (s *Server) URL() string { return s.url }

// Database is the name of the test's database.
func (s *Server) Database() string { return s.db }

// Stop stops the server at once, as a crash would: connections drop and
// new ones are refused until Restart. Only a server from StartOwn can be
// stopped.
func (s *Server) Stop() {
	s.t.Helper()
	if !s.own {
		s.t.Fatal("pgtest: Stop needs a server of the test's own: use pgtest.StartOwn")
	}
	if err := s.c.stop(); err != nil {
		s.t.Fatalf("pgtest: stop PostgreSQL: %v", err)
	}
}

// Restart starts the server again on the same port and data, stopping it
// first if it runs, and returns once it accepts connections. Only a server
// from StartOwn can be restarted.
func (s *Server) Restart() {
	s.t.Helper()
	if !s.own {
		s.t.Fatal("pgtest: Restart needs a server of the test's own: use pgtest.StartOwn")
	}
	if err := s.c.stop(); err != nil {
		s.t.Fatalf("pgtest: stop PostgreSQL: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	if err := s.c.start(ctx); err != nil {
		s.t.Fatalf("pgtest: restart PostgreSQL: %v", err)
	}
}

// startTimeout bounds initdb plus the server's start-up, and adminTimeout
// creating or dropping a database: generous, for a loaded CI machine.
const (
	startTimeout = 2 * time.Minute
	adminTimeout = 30 * time.Second
)

// The shared server, started by the first Start and stopped by Wrap.
var (
	wrapped atomic.Bool

	sharedMu      sync.Mutex
	shared        *cluster
	sharedErr     error
	sharedStopped bool
)

// M is what a TestMain runs: *testing.M, or a wrapper of it.
type M interface{ Run() int }

// Wrap returns m for TestMain to run (directly, or through
// goleak.VerifyTestMain): it runs the tests, then stops the server that
// Start shared between them and removes its files.
func Wrap(m M) M {
	wrapped.Store(true)
	return wrappedM{m}
}

type wrappedM struct{ m M }

func (w wrappedM) Run() int {
	code := w.m.Run()
	sharedMu.Lock()
	defer sharedMu.Unlock()
	sharedStopped = true
	if shared == nil {
		return code
	}
	if err := shared.remove(); err != nil {
		fmt.Fprintf(os.Stderr, "pgtest: remove the shared PostgreSQL: %v\n", err)
		if code == 0 {
			code = 1
		}
	}
	shared = nil
	return code
}

// Start returns a fresh, empty database for the test, dropped when the
// test ends. The server under it is shared by the test binary: started by
// the first call, stopped by Wrap; with SAGA_TEST_PG_URL set, it is that
// server.
func Start(t testing.TB) *Server {
	t.Helper()
	if !wrapped.Load() {
		t.Fatal("pgtest: the package's TestMain must run its tests through pgtest.Wrap, which stops the shared PostgreSQL:\n" +
			"\tfunc TestMain(m *testing.M) { goleak.VerifyTestMain(pgtest.Wrap(m)) }")
	}
	if base := os.Getenv(EnvURL); base != "" {
		return onExternal(t, base)
	}
	c := sharedCluster(t)
	s := &Server{t: t, c: c}
	ctx, cancel := context.WithTimeout(context.Background(), adminTimeout)
	defer cancel()
	db, err := createDatabase(ctx, c.adminURL())
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	s.db, s.url = db, c.url(db)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), adminTimeout)
		defer cancel()
		if err := dropDatabase(ctx, c.adminURL(), db); err != nil {
			t.Errorf("pgtest: %v", err)
		}
	})
	return s
}

// StartOwn starts a server for this test alone, which it may Stop and
// Restart, and returns a fresh database on it. The server is removed when
// the test ends. It always starts one from the machine's binaries, even
// with SAGA_TEST_PG_URL set, since a test could not stop that server.
func StartOwn(t testing.TB) *Server {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	began := time.Now()
	c, err := newCluster(ctx)
	if err != nil {
		unavailable(t, err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("pgtest: the end of the server's log:\n%s", c.logTail(0, 4096))
		}
		if err := c.remove(); err != nil {
			t.Errorf("pgtest: %v", err)
		}
	})
	t.Logf("pgtest: started PostgreSQL from %s in %v", c.bin, time.Since(began).Round(time.Millisecond))
	db, err := createDatabase(ctx, c.adminURL())
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	return &Server{t: t, url: c.url(db), db: db, c: c, own: true}
}

// sharedCluster starts the shared server on first use; a failure to start
// it fails every test that asks, with the same error.
func sharedCluster(t testing.TB) *cluster {
	t.Helper()
	sharedMu.Lock()
	defer sharedMu.Unlock()
	if sharedStopped {
		t.Fatal("pgtest: Start called after the package's tests ended")
	}
	if shared == nil && sharedErr == nil {
		ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
		defer cancel()
		began := time.Now()
		shared, sharedErr = newCluster(ctx)
		if sharedErr == nil {
			t.Logf("pgtest: started the shared PostgreSQL from %s in %v", shared.bin, time.Since(began).Round(time.Millisecond))
		}
	}
	if sharedErr != nil {
		unavailable(t, sharedErr)
	}
	return shared
}

// unavailable ends a test that has no PostgreSQL to run on: it fails, so
// that a machine without PostgreSQL does not pass the test without running
// it, unless SAGA_TEST_PG_OPTIONAL=1 asks for a skip.
func unavailable(t testing.TB, err error) {
	t.Helper()
	if errors.Is(err, errNoBinaries) {
		msg := fmt.Sprintf("pgtest: %v, and %s is not set: install PostgreSQL's server "+
			"(Debian, Ubuntu: apt-get install postgresql; macOS: brew install postgresql) "+
			"or set %s=postgres://user@host:port/postgres", err, EnvURL, EnvURL)
		if os.Getenv(EnvOptional) == "1" {
			t.Skip(msg + " (skipped: " + EnvOptional + "=1)")
		}
		t.Fatal(msg + "; " + EnvOptional + "=1 skips these tests instead")
	}
	t.Fatalf("pgtest: start PostgreSQL: %v", err)
}

// onExternal makes the test's database on the server that base names.
func onExternal(t testing.TB, base string) *Server {
	t.Helper()
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		t.Fatalf("pgtest: %s must be a postgres:// URL, got %q", EnvURL, base)
	}
	ctx, cancel := context.WithTimeout(context.Background(), adminTimeout)
	defer cancel()
	db, err := createDatabase(ctx, base)
	if err != nil {
		t.Fatalf("pgtest: on %s: %v", EnvURL, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), adminTimeout)
		defer cancel()
		if err := dropDatabase(ctx, base, db); err != nil {
			t.Errorf("pgtest: on %s: %v", EnvURL, err)
		}
	})
	u.Path = "/" + db
	u.RawPath = ""
	return &Server{t: t, url: u.String(), db: db}
}

// createDatabase makes a database with a random name, through a connection
// to adminURL, and returns its name.
func createDatabase(ctx context.Context, adminURL string) (string, error) {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("random database name: %w", err)
	}
	name := "saga_test_" + hex.EncodeToString(b[:])
	conn, err := pgx.Connect(ctx, adminURL)
	if err != nil {
		return "", fmt.Errorf("connect to create database %s: %w", name, err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return "", fmt.Errorf("create database %s: %w", name, err)
	}
	return name, nil
}

// dropDatabase drops a test's database, closing the connections the test
// left open.
func dropDatabase(ctx context.Context, adminURL, name string) error {
	conn, err := pgx.Connect(ctx, adminURL)
	if err != nil {
		return fmt.Errorf("connect to drop database %s: %w", name, err)
	}
	defer conn.Close(context.Background())
	quoted := pgx.Identifier{name}.Sanitize()
	_, err = conn.Exec(ctx, "DROP DATABASE IF EXISTS "+quoted+" WITH (FORCE)")
	if err != nil && strings.Contains(err.Error(), "syntax error") {
		// Before PostgreSQL 13 there is no FORCE: end the sessions first.
		_, err = conn.Exec(ctx, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name)
		if err == nil {
			_, err = conn.Exec(ctx, "DROP DATABASE IF EXISTS "+quoted)
		}
	}
	if err != nil {
		return fmt.Errorf("drop database %s: %w", name, err)
	}
	return nil
}
