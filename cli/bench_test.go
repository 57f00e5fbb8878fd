package cli

import (
	"strings"
	"testing"
)

// benchWrites is what one order saga should write, by kind, under a
// bench's options.
type benchWrites struct {
	args           []string
	history, task  float64 // exactly, per saga
	minAcks        float64
	eager          bool
	startVia       string
	appendsPerSaga float64
}

func TestBenchJSONReportsEveryFigure(t *testing.T) {
	for name, want := range map[string]benchWrites{
		// Eager activities: no task; a client's start is appended alone.
		"default": {history: 5, task: 0, minAcks: 5, eager: true, startVia: "client", appendsPerSaga: 5},
		// Tasks, and starts appended with their first decision.
		"tasks, starts by the node": {args: []string{"--eager=false", "--start-via", "node"}, history: 4, task: 3, minAcks: 7, startVia: "node", appendsPerSaga: 4},
	} {
		t.Run(name, func(t *testing.T) { checkBenchJSON(t, want) })
	}
}

func checkBenchJSON(t *testing.T, want benchWrites) {
	args := append([]string{"bench", "--sagas", "50", "--in-flight", "8", "--idle", "5", "--raw-duration", "200ms", "--json"}, want.args...)
	r := runCLI(t, noEnv, args...)
	expectCode(t, r, ExitOK)
	m := decodeObject(t, r.stdout)
	requireKeys(t, m, "sagas", "sagas_per_sec", "events_per_sec", "p50_ms", "p99_ms", "idle_p50_ms", "idle_p99_ms",
		"raw_appends_per_sec", "appends_per_sec", "append_ratio", "writes_per_saga", "writes_by_kind",
		"peak_rss_mib", "cpu_seconds", "sync", "shards", "in_flight", "where")
	num := func(k string) float64 {
		t.Helper()
		v, ok := m[k].(float64)
		if !ok {
			t.Fatalf("%s is %T, not a number: %v", k, m[k], m[k])
		}
		return v
	}
	if num("sagas") != 50 || num("in_flight") != 8 || num("shards") != 1 || num("idle_sagas") != 5 {
		t.Errorf("run parameters not reported as given: %s", r.stdout)
	}
	if m["sync"] != "interval" || m["where"] != "embedded" {
		t.Errorf("sync %v, where %v", m["sync"], m["where"])
	}
	for _, k := range []string{"sagas_per_sec", "events_per_sec", "p50_ms", "idle_p50_ms", "raw_appends_per_sec", "appends_per_sec", "append_ratio", "peak_rss_mib", "cpu_seconds"} {
		if num(k) <= 0 {
			t.Errorf("%s = %v, want > 0", k, num(k))
		}
	}
	if num("p99_ms") < num("p50_ms") || num("idle_p99_ms") < num("idle_p50_ms") {
		t.Errorf("p99 below p50: %s", r.stdout)
	}
	if m["eager"] != want.eager || m["start_via"] != want.startVia {
		t.Errorf("eager %v, start_via %v not reported as given", m["eager"], m["start_via"])
	}
	// An order saga is 5 commits, or 4 when its start carries its first
	// decision (events/s counts its 13 events).
	if got := num("appends_per_saga"); got < want.appendsPerSaga-0.01 || got > want.appendsPerSaga+0.01 {
		t.Errorf("appends_per_saga = %v, want %v", got, want.appendsPerSaga)
	}
	if got := num("events_per_sec") / num("sagas_per_sec"); got < 12.99 {
		t.Errorf("events per saga = %v, want >= 13", got)
	}
	kinds, ok := m["writes_by_kind"].(map[string]any)
	if !ok {
		t.Fatalf("writes_by_kind is %T", m["writes_by_kind"])
	}
	var sum float64
	for k, v := range kinds {
		f, ok := v.(float64)
		if !ok {
			t.Fatalf("writes_by_kind[%s] is %T", k, v)
		}
		sum += f
	}
	if h, _ := kinds["history"].(float64); h < want.history-0.01 || h > want.history+0.01 {
		t.Errorf("history appends per saga = %v, want %v", h, want.history)
	}
	if task, _ := kinds["task"].(float64); task < want.task-0.01 || task > want.task+0.01 {
		t.Errorf("task publishes per saga = %v, want %v", task, want.task)
	}
	if ack, _ := kinds["ack"].(float64); ack < want.minAcks {
		t.Errorf("acks per saga = %v, want >= %v", ack, want.minAcks)
	}
	if total := num("writes_per_saga"); total < sum-0.01 || total > sum+0.01 {
		t.Errorf("writes_per_saga %v is not the sum of writes_by_kind %v", total, sum)
	}
	if strings.Contains(r.stderr, "\r") {
		t.Errorf("progress drawn on a stderr that is not a terminal: %q", r.stderr)
	}
}

func TestBenchTextReport(t *testing.T) {
	r := runCLI(t, noEnv, "bench", "--sagas", "20", "--in-flight", "4", "--idle", "2", "--shards", "2", "--raw-duration", "100ms")
	expectCode(t, r, ExitOK)
	for _, want := range []string{"20 sagas in", "2 history shard(s)", "one at a time (2 sagas)", "raw OCC appends", "messages per saga", "history", "peak RSS"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("report lacks %q:\n%s", want, r.stdout)
		}
	}
}

func TestBenchUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{"--shards", "0"},
		{"--sync", "foo"},
		{"--sagas", "0"},
		{"--idle", "-1"},
		{"--raw-duration", "0s"},
	} {
		r := runCLI(t, noEnv, append([]string{"bench"}, args...)...)
		expectCode(t, r, ExitUsage)
		if r.stdout != "" {
			t.Errorf("%v: wrote to stdout: %q", args, r.stdout)
		}
	}
}

func TestClassifyWire(t *testing.T) {
	for subject, want := range map[string]string{
		"bx.h.0.s1":                             wireHistory,
		"bx.task.activity.pay.s1.3":             wireTask,
		"$JS.ACK.BX_TASKS.c.1.2.3.4.5":          wireAck,
		"$KV.BX_TIMERS.k":                       wireKV,
		"_INBOX.abc.def":                        wireInbox,
		"$JS.API.STREAM.MSG.DELETE.BX_TASKS":    wireAPI,
		"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIV": wireOther,
		"bx.start.order":                        wireOther,
	} {
		if got := classify("bx", subject, ""); got != want {
			t.Errorf("classify(%q) = %q, want %q", subject, got, want)
		}
	}
	if got := classify("bx", "bx.h.0.s1", "$JS.ACK.BX_HISTORY_0.saga-dispatch.1.1.1.1.1"); got != wireDeliver {
		t.Errorf("a delivery of a commit is classified %q", got)
	}
	for subject, want := range map[string]string{
		"$JS.API.STREAM.MSG.DELETE.BX_TASKS":   "STREAM.MSG.DELETE",
		"$JS.API.CONSUMER.MSG.NEXT.BX_TASKS.c": "CONSUMER.MSG.NEXT",
		"$JS.API.DIRECT.GET.BX_HISTORY_0":      "DIRECT.GET",
		"$JS.API.STREAM.INFO.BX_TASKS":         "STREAM.INFO",
		"$JS.API.INFO":                         "INFO",
		"$JS.API.SERVER.REMOVE":                "OTHER",
	} {
		if got := apiVerb(subject); got != want {
			t.Errorf("apiVerb(%q) = %q, want %q", subject, got, want)
		}
	}
}
