package pgtest_test

import (
	"context"
	"net/url"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/goleak"

	"github.com/jetsaga/saga/internal/pgtest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(pgtest.Wrap(m)) }

func connect(t *testing.T, ctx context.Context, url string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatalf("connect to %s: %v", url, err)
	}
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

func count(t *testing.T, ctx context.Context, conn *pgx.Conn, query string, args ...any) int {
	t.Helper()
	var n int
	if err := conn.QueryRow(ctx, query, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
	return n
}

func TestEachTestHasItsOwnDatabase(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	a := pgtest.Start(t)
	var inner string
	t.Run("inner", func(t *testing.T) {
		b := pgtest.Start(t)
		inner = b.Database()
		if b.Database() == a.Database() {
			t.Fatalf("both tests got database %s", a.Database())
		}
		cb := connect(t, ctx, b.URL())
		if _, err := cb.Exec(ctx, "CREATE TABLE sagas (id text PRIMARY KEY)"); err != nil {
			t.Fatalf("create table: %v", err)
		}
	})
	ca := connect(t, ctx, a.URL())
	if n := count(t, ctx, ca, "SELECT count(*) FROM pg_tables WHERE tablename = 'sagas'"); n != 0 {
		t.Fatalf("the other test's table is visible")
	}
	if n := count(t, ctx, ca, "SELECT count(*) FROM pg_database WHERE datname = $1", inner); n != 0 {
		t.Fatalf("database %s outlived its test", inner)
	}
}

func TestStopAndRestart(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s := pgtest.StartOwn(t)
	conn := connect(t, ctx, s.URL())
	if _, err := conn.Exec(ctx, "CREATE TABLE events (seq int PRIMARY KEY)"); err != nil {
		t.Fatalf("create table: %v", err)
	}
	if _, err := conn.Exec(ctx, "INSERT INTO events VALUES (1)"); err != nil {
		t.Fatalf("insert: %v", err)
	}

	began := time.Now()
	s.Stop()
	if _, err := conn.Exec(ctx, "SELECT 1"); err == nil {
		t.Fatal("a connection from before Stop still works")
	}
	if c, err := pgx.Connect(ctx, s.URL()); err == nil {
		_ = c.Close(ctx)
		t.Fatal("connected to a stopped server")
	}
	s.Restart()
	t.Logf("stopped and restarted (with crash recovery) in %v", time.Since(began).Round(time.Millisecond))

	conn = connect(t, ctx, s.URL())
	if n := count(t, ctx, conn, "SELECT count(*) FROM events"); n != 1 {
		t.Fatalf("after a restart, %d rows, want the 1 committed", n)
	}
	if _, err := conn.Exec(ctx, "INSERT INTO events VALUES (2)"); err != nil {
		t.Fatalf("insert after restart: %v", err)
	}

	// Restart also stops a running server first.
	s.Restart()
	conn = connect(t, ctx, s.URL())
	if n := count(t, ctx, conn, "SELECT count(*) FROM events"); n != 2 {
		t.Fatalf("after a second restart, %d rows, want 2", n)
	}
}

func TestUsesTheServerInTheEnvironment(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	outside := pgtest.StartOwn(t) // stands in for a server someone runs
	t.Setenv(pgtest.EnvURL, outside.URL())
	var inner *pgtest.Server
	t.Run("inner", func(t *testing.T) {
		inner = pgtest.Start(t)
		if inner.Database() == outside.Database() {
			t.Fatalf("got the server's own database %s", inner.Database())
		}
		u, err := url.Parse(inner.URL())
		if err != nil {
			t.Fatal(err)
		}
		o, _ := url.Parse(outside.URL())
		if u.Host != o.Host || u.Path != "/"+inner.Database() || u.RawQuery != o.RawQuery {
			t.Fatalf("URL %s: want %s with database %s", inner.URL(), outside.URL(), inner.Database())
		}
		conn := connect(t, ctx, inner.URL())
		if n := count(t, ctx, conn, "SELECT count(*) FROM pg_database WHERE datname = current_database()"); n != 1 {
			t.Fatal("not connected to the test's database")
		}
	})
	conn := connect(t, ctx, outside.URL())
	if n := count(t, ctx, conn, "SELECT count(*) FROM pg_database WHERE datname = $1", inner.Database()); n != 0 {
		t.Fatalf("database %s outlived its test", inner.Database())
	}
}
