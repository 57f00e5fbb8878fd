package pgarchive_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jetsaga/saga/pgarchive"
)

// TestIDPrefixUsesIndex checks that the id prefix filter (the UI's) reads
// an index, for the page (List) and for the counts per status
// (CountByStatus), in a database whose collation is not C: there the
// primary key cannot serve a prefix, and before migration 0004 both
// queries read every row. The test databases are C, so saga_id is given
// another collation first (ICU's root locale when the server has ICU,
// else any of the system's).
//
// The plans are custom plans (the prefix's value known), as the server
// makes them for these statements: a generic plan cannot use the index
// (the prefix's range depends on its value) and costs far more, so the
// plan cache keeps choosing custom plans.
func TestIDPrefixUsesIndex(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s := seedList(ctx, t, listTestApplied)
	var coll string
	err := s.store.Pool().QueryRow(ctx, `SELECT collname FROM pg_collation
		WHERE collname NOT IN ('default', 'C', 'POSIX', 'ucs_basic') AND collencoding IN (-1, 6) -- any, UTF8
		ORDER BY collname <> 'und-x-icu', collname LIMIT 1`).Scan(&coll)
	if err != nil {
		t.Fatalf("no collation other than C: %v", err)
	}
	if _, err := s.store.Pool().Exec(ctx, `ALTER TABLE saga_sagas ALTER COLUMN saga_id TYPE text COLLATE "`+coll+`"`); err != nil {
		t.Fatal(err)
	}
	if _, err := s.store.Pool().Exec(ctx, "ANALYZE saga_sagas"); err != nil {
		t.Fatal(err)
	}
	conn, err := s.store.Pool().Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()

	// list-000123 and its copies: 20 sagas, fewer than a page, so that
	// walking the start-time index would read every row.
	c := listCase{"id-prefix", pgarchive.Filter{IDPrefix: "list-000123"}}
	list := `SELECT saga_id FROM saga_sagas WHERE starts_with(saga_id, $1)
	ORDER BY started_at DESC, saga_id DESC LIMIT $2`
	checkListSQL(ctx, t, s.store, conn.Conn(), c, list, []any{c.filter.IDPrefix, 101})
	count := "SELECT status, count(*) FROM saga_sagas WHERE starts_with(saga_id, $1) GROUP BY status"
	counts, err := s.store.CountByStatus(ctx, c.filter)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, k := range counts {
		n += k
	}
	if n != listSagas/listTestApplied {
		t.Fatalf("the prefix counts %v, want %d sagas", counts, listSagas/listTestApplied)
	}
	for _, q := range []struct {
		name, sql string
		args      []any
	}{{"list", list, []any{c.filter.IDPrefix, 101}}, {"count", count, []any{c.filter.IDPrefix}}} {
		plan := explainList(ctx, t, conn.Conn(), "force_custom_plan", q.sql, q.args)
		t.Logf("%s (saga_id collated %q):\n%s\n%s", q.name, coll, q.sql, plan)
		if !strings.Contains(plan, "saga_sagas_id_prefix") || strings.Contains(plan, "Seq Scan on saga_sagas") {
			t.Errorf("%s: the plan does not read saga_sagas_id_prefix", q.name)
		}
	}
}
