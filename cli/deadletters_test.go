package cli

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/jetsaga/saga/internal/natstest"
	"github.com/jetsaga/saga/stream"
)

// deadLetterServer runs a server with the dead-letter stream of the
// default prefix, holding dls, and returns its URL.
func deadLetterServer(t *testing.T, dls ...stream.DeadLetter) string {
	t.Helper()
	srv := natstest.Start(t)
	st, err := stream.Open(srv.Conn(), stream.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := st.JetStream().CreateStream(ctx, st.Config().DeadLetterStreamConfig()); err != nil {
		t.Fatal(err)
	}
	for _, d := range dls {
		if err := st.PublishDeadLetter(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	return srv.ClientURL()
}

var (
	deadLetterTime = time.Date(2026, 3, 1, 12, 30, 45, 0, time.UTC)
	poisonCommit   = stream.DeadLetter{
		Stream: "SAGA_HISTORY_0", Subject: "saga.h.0.o-1", Sequence: 17, Consumer: "saga-dispatcher",
		Reason: "undecodable commit: msgpack: invalid code c1", Node: "node-a", Deliveries: 1,
		Time: deadLetterTime, Data: []byte{0xc1},
	}
	panickedTask = stream.DeadLetter{
		Stream: "SAGA_TASKS", Subject: "saga.task.activity.charge", Sequence: 4, Consumer: "saga-activities-charge",
		Reason: "handler panicked: index out of range", Node: "node-b", Deliveries: 3,
		Time: deadLetterTime.Add(time.Minute), Data: []byte(`{"saga_id":"o-2"}`),
	}
)

func TestDeadLettersTable(t *testing.T) {
	url := deadLetterServer(t, poisonCommit, panickedTask)
	r := withURL(t, url, "dead-letters")
	expectCode(t, r, ExitOK)
	lines := strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n")
	if len(lines) != 3 {
		t.Fatalf("want a header and 2 rows:\n%s", r)
	}
	if got := strings.Fields(lines[0]); strings.Join(got, " ") != "TIME STREAM SEQ SUBJECT SIZE REASON" {
		t.Errorf("header %q", lines[0])
	}
	for i, want := range [][]string{
		{"2026-03-01T12:30:45Z", "SAGA_HISTORY_0", "17", "saga.h.0.o-1", "1", "undecodable commit: msgpack: invalid code c1"},
		{"2026-03-01T12:31:45Z", "SAGA_TASKS", "4", "saga.task.activity.charge", "17", "handler panicked: index out of range"},
	} {
		row := lines[i+1]
		prefix := strings.Join(strings.Fields(row)[:5], " ")
		if prefix != strings.Join(want[:5], " ") || !strings.HasSuffix(row, want[5]) {
			t.Errorf("row %d: %q, want %q", i+1, row, want)
		}
	}

	// The most recent first: --limit 1 is the panicked task.
	r = withURL(t, url, "dead-letters", "--limit", "1")
	expectCode(t, r, ExitOK)
	if strings.Count(r.stdout, "\n") != 2 || !strings.Contains(r.stdout, "SAGA_TASKS") {
		t.Errorf("--limit 1: want the header and the most recent row:\n%s", r)
	}
	// --limit 0 is all of them, not none.
	r = withURL(t, url, "dead-letters", "--limit", "0")
	expectCode(t, r, ExitOK)
	if strings.Count(r.stdout, "\n") != 3 {
		t.Errorf("--limit 0: want every row:\n%s", r)
	}
}

func TestDeadLettersJSON(t *testing.T) {
	url := deadLetterServer(t, poisonCommit, panickedTask)
	r := withURL(t, url, "dead-letters", "--json")
	expectCode(t, r, ExitOK)
	var got []map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &got); err != nil {
		t.Fatalf("stdout is not a JSON array: %v\n%s", err, r)
	}
	if len(got) != 2 {
		t.Fatalf("want 2 dead letters:\n%s", r)
	}
	for i, d := range []stream.DeadLetter{poisonCommit, panickedTask} {
		want := map[string]any{
			"stream": d.Stream, "subject": d.Subject, "sequence": float64(d.Sequence), "consumer": d.Consumer,
			"reason": d.Reason, "node": d.Node, "deliveries": float64(d.Deliveries),
			"time": d.Time.Format(time.RFC3339Nano), "size": float64(len(d.Data)), "truncated": false,
			"dead_letter_sequence": float64(i + 1),
		}
		if len(got[i]) != len(want) {
			t.Errorf("dead letter %d has keys %v, want exactly %v", i, got[i], want)
		}
		for k, v := range want {
			if got[i][k] != v {
				t.Errorf("dead letter %d: %s = %v, want %v", i, k, got[i][k], v)
			}
		}
	}

	r = withURL(t, url, "dead-letters", "--json", "--limit", "1")
	expectCode(t, r, ExitOK)
	if err := json.Unmarshal([]byte(r.stdout), &got); err != nil || len(got) != 1 || got[0]["stream"] != "SAGA_TASKS" {
		t.Errorf("--json --limit 1: want the most recent only:\n%s", r)
	}
}

func TestDeadLettersEmpty(t *testing.T) {
	url := deadLetterServer(t)
	r := withURL(t, url, "dead-letters")
	expectCode(t, r, ExitOK)
	if r.stdout != "no dead letters\n" {
		t.Errorf("table: %q, want %q", r.stdout, "no dead letters\n")
	}
	r = withURL(t, url, "dead-letters", "--json")
	expectCode(t, r, ExitOK)
	if strings.TrimSpace(r.stdout) != "[]" {
		t.Errorf("json: %q, want []", r.stdout)
	}
}

// A prefix with no dead-letter stream is reported, not shown as empty.
func TestDeadLettersNoStream(t *testing.T) {
	url := deadLetterServer(t)
	r := withURL(t, url, "dead-letters", "--prefix", "other")
	expectCode(t, r, ExitError)
	if !strings.Contains(r.stderr, "OTHER_DEAD_LETTERS") || !strings.Contains(r.stderr, "no stream") || r.stdout != "" {
		t.Errorf("want an error naming the missing stream:\n%s", r)
	}
}

func TestDeadLettersUsage(t *testing.T) {
	for _, args := range [][]string{
		{"--limit", "-1"},
		{"--limit", "many"},
		{"extra"},
	} {
		// Usage errors come before any connection.
		r := withURL(t, "nats://127.0.0.1:1", append([]string{"dead-letters"}, args...)...)
		expectCode(t, r, ExitUsage)
		if r.stdout != "" {
			t.Errorf("%v printed %q", args, r.stdout)
		}
	}
}
