package pgarchive

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

//go:embed migrations/*.sql
var migrations embed.FS

// ErrNotConfigured: no Postgres URL was given (--pg-url, SAGA_PG_URL), so
// there is no projection to read.
var ErrNotConfigured = errors.New("no Postgres projection configured (set --pg-url or SAGA_PG_URL)")

// ErrNotFound: the projection holds no saga with that id.
var ErrNotFound = errors.New("saga not in the projection")

// Store is the projection in one Postgres database.
type Store struct {
	pool *pgxpool.Pool

	mu       sync.Mutex
	migrated bool
}

// ensureMigrated migrates once, on first use: a node starts while
// Postgres is away, and the projection begins when it is back.
func (s *Store) ensureMigrated(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.migrated {
		return nil
	}
	if _, err := s.Migrate(ctx); err != nil {
		return err
	}
	s.migrated = true
	return nil
}

// Open connects to the database at url; it does not migrate.
func Open(ctx context.Context, url string) (*Store, error) {
	if url == "" {
		return nil, ErrNotConfigured
	}
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		return nil, fmt.Errorf("pgarchive: open: %w", err)
	}
	return &Store{pool: pool}, nil
}

// Close releases the connections.
func (s *Store) Close() { s.pool.Close() }

// Pool returns the connection pool, for tests and tools.
func (s *Store) Pool() *pgxpool.Pool { return s.pool }

// migrationLock serialises migrations of nodes starting together.
const migrationLock = 7306012

// Migrate applies the embedded migrations not applied yet, in order, each
// in its own transaction, and returns the schema version.
func (s *Store) Migrate(ctx context.Context) (int, error) {
	files, err := fs.Glob(migrations, "migrations/*.sql")
	if err != nil {
		return 0, err
	}
	sort.Strings(files)
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return 0, fmt.Errorf("pgarchive: migrate: %w", err)
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock($1)", migrationLock); err != nil {
		return 0, fmt.Errorf("pgarchive: migrate: lock: %w", err)
	}
	defer func() { _, _ = conn.Exec(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock($1)", migrationLock) }()
	if _, err := conn.Exec(ctx, `CREATE TABLE IF NOT EXISTS saga_schema_migrations (
		version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())`); err != nil {
		return 0, fmt.Errorf("pgarchive: migrate: %w", err)
	}
	var current int
	if err := conn.QueryRow(ctx, "SELECT coalesce(max(version), 0) FROM saga_schema_migrations").Scan(&current); err != nil {
		return 0, fmt.Errorf("pgarchive: migrate: %w", err)
	}
	for _, f := range files {
		v, err := strconv.Atoi(strings.SplitN(strings.TrimPrefix(f, "migrations/"), "_", 2)[0])
		if err != nil {
			return 0, fmt.Errorf("pgarchive: migration %s has no version number: %w", f, err)
		}
		if v <= current {
			continue
		}
		sql, err := migrations.ReadFile(f)
		if err != nil {
			return 0, err
		}
		err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, string(sql)); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, "INSERT INTO saga_schema_migrations (version) VALUES ($1)", v)
			return err
		})
		if err != nil {
			return 0, fmt.Errorf("pgarchive: migration %s: %w", f, err)
		}
		current = v
	}
	return current, nil
}
