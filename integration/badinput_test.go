package integration

import (
	"bytes"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/jetsaga/saga"
	"github.com/jetsaga/saga/api"
	"github.com/jetsaga/saga/cli"
	"github.com/jetsaga/saga/examples/order"
	"github.com/jetsaga/saga/internal/natstest"
	"github.com/jetsaga/saga/stream"
	"github.com/jetsaga/saga/worker"
)

// apiCall sends a request to the node API and returns the reply body, or
// the error code and description of an error reply; "no responders" when
// no node serves the subject.
func apiCall(t *testing.T, nc *nats.Conn, verb string, body []byte) (data []byte, code, desc string) {
	t.Helper()
	msg, err := nc.Request("saga.api."+verb, body, 5*time.Second)
	if errors.Is(err, nats.ErrNoResponders) {
		return nil, "no responders", ""
	}
	if err != nil {
		t.Fatalf("request %s: %v", verb, err)
	}
	return msg.Data, msg.Header.Get(micro.ErrorCodeHeader), msg.Header.Get(micro.ErrorHeader)
}

// Acceptance 6: invalid ids, an unknown workflow type, a non-msgpack
// payload and an oversized payload each get a clear error, and the node
// keeps serving other sagas.
func TestBadInputIsRefusedAndNodeKeepsServing(t *testing.T) {
	c := newCluster(t)
	svc := order.NewService()
	node := c.node(worker.Options{}, svc.Definitions()...)
	cl := c.client()
	nc := c.srv.Conn()
	ctx := ctxTimeout(t, 30*time.Second)

	t.Run("invalid saga ids", func(t *testing.T) {
		for _, id := range []string{"a.b", "a*", ">", "with space", "tab\tid", strings.Repeat("x", 129), "ümlaut"} {
			_, err := cl.Start(ctx, "order", orderInput("x"), saga.StartOptions{ID: id})
			if !errors.Is(err, saga.ErrInvalidID) || !errors.Is(err, saga.KindValidation) {
				t.Errorf("start %q: got %v, want ErrInvalidID", id, err)
			}
			if _, err := cl.Describe(ctx, id); !errors.Is(err, saga.ErrInvalidID) {
				t.Errorf("describe %q: got %v", id, err)
			}
		}
		_, code, desc := apiCall(t, nc, "start.order", []byte(`{"id":"bad.id","input":{"order_id":"x"}}`))
		if code != "400" || !strings.Contains(desc, `saga id "bad.id"`) {
			t.Errorf("API start with a bad id: %s %s", code, desc)
		}
		if _, err := cl.Start(ctx, "bad.type", nil, saga.StartOptions{}); !errors.Is(err, saga.ErrInvalidID) {
			t.Errorf("bad workflow type: %v", err)
		}
	})

	t.Run("unknown workflow type", func(t *testing.T) {
		// Starts go to <prefix>.api.start.<type>, served only by nodes that
		// register the type: no responders means no node runs it.
		if _, code, _ := apiCall(t, nc, "start.refund", []byte(`{"input":{}}`)); code != "no responders" {
			t.Errorf("API start of an unknown type: %s", code)
		}
		// A client without a registry can start any type. The saga waits
		// for a node that runs the type, and describe says why it waits.
		if _, err := cl.Start(ctx, "refund", map[string]int{"amount": 1}, saga.StartOptions{ID: "unknown-type"}); err != nil {
			t.Fatal(err)
		}
		d, err := cl.Describe(ctx, "unknown-type")
		if err != nil {
			t.Fatal(err)
		}
		if d.Status != saga.StatusRunning || !strings.Contains(d.Warning, `no node has registered workflow type "refund"`) {
			t.Errorf("describe %s, warning %q", d.Status, d.Warning)
		}
		// Once a node registers the type, the saga runs.
		refund := saga.NewWorkflow("refund", 1, func(ctx saga.Context, in map[string]int) (int, error) { return in["amount"], nil })
		c.node(worker.Options{NodeName: "refunds"}, refund)
		if d, err = cl.Wait(ctx, "unknown-type"); err != nil || d.Status != saga.StatusCompleted || d.Warning != "" {
			t.Errorf("after a node registered the type: %v %+v", err, d)
		}
	})

	t.Run("input that does not fit the workflow", func(t *testing.T) {
		for _, body := range []string{
			`{"input":{"order_id":5}}`,
			`{"input":{"items":"many"}}`,
			`{"input":{"order_id":"x","typo_field":1}}`,
			`{"input":`,
			`not json`,
			`{"surprise":1}`,
		} {
			_, code, desc := apiCall(t, nc, "start.order", []byte(body))
			if code != "400" || desc == "" {
				t.Errorf("API start %s: %s %s", body, code, desc)
			}
		}
	})

	st := c.store()
	cfg := st.Config()
	js := st.JetStream()
	// Every malformed message ends in the dead-letter stream, with the
	// reason, under its subject there.
	wantDead := map[string]string{}
	publish := func(t *testing.T, subject string, data []byte, reason string) {
		t.Helper()
		ack, err := js.Publish(ctx, subject, data)
		if err != nil {
			t.Fatal(err)
		}
		wantDead[ack.Stream+":"+strconv.FormatUint(ack.Sequence, 10)] = reason
	}

	t.Run("non-msgpack history message", func(t *testing.T) {
		publish(t, cfg.HistorySubject("garbage"), []byte("{\"json\": \"not msgpack\"}"), "undecodable history message")
		// A crafted header that claims four billion elements.
		publish(t, cfg.HistorySubject("bomb"), []byte{0xdd, 0xff, 0xff, 0xff, 0xff}, "undecodable history message")
		_, err := cl.Describe(ctx, "garbage")
		var ce *stream.CodecError
		if !errors.Is(err, saga.KindCodec) || !errors.As(err, &ce) || !strings.Contains(err.Error(), "stream sequence") {
			t.Errorf("describe garbage: %v", err)
		}
	})

	t.Run("malformed tasks", func(t *testing.T) {
		for i, data := range [][]byte{[]byte("hello"), {0xdf, 0xff, 0xff, 0xff, 0xff}, {}} {
			publish(t, cfg.TaskSubject(order.StepReserveInventory, "bad-task", uint64(i)), data, "undecodable activity task")
		}
		// A well-formed task on the subject of another activity.
		task, err := stream.Marshal(&stream.ActivityTask{SagaID: "elsewhere", ScheduledEventID: 1, ActivityType: order.StepShipOrder, Attempt: 1})
		if err != nil {
			t.Fatal(err)
		}
		publish(t, cfg.TaskSubject(order.StepReserveInventory, "bad-task", 9), task, "activity task does not match its subject")
		publish(t, cfg.WorkflowTaskSubject(order.Workflow.Name()), []byte("not a workflow task"), "undecodable workflow task")
	})

	t.Run("oversized payloads", func(t *testing.T) {
		huge := strings.Repeat("x", 2<<20)
		_, err := cl.Start(ctx, "order", order.Input{OrderID: huge}, saga.StartOptions{ID: "huge"})
		if !errors.Is(err, stream.ErrTooLarge) || !errors.Is(err, saga.KindValidation) {
			t.Errorf("2 MiB start: got %v, want ErrTooLarge", err)
		}
		body, _ := json.Marshal(api.StartRequest{Input: json.RawMessage(`{"order_id":"` + strings.Repeat("y", 900_000) + `"}`)})
		_, code, desc := apiCall(t, nc, "start.order", body)
		if code != "400" || !strings.Contains(desc, "too large") {
			t.Errorf("API start near max payload: %s %.200s", code, desc)
		}
		if _, err := cl.Describe(ctx, "huge"); !errors.Is(err, saga.ErrNotFound) {
			t.Errorf("oversized start left a saga behind: %v", err)
		}
	})

	// After all of that the node still runs sagas.
	run, err := saga.StartWorkflow(ctx, cl, order.Workflow, orderInput("after"), saga.StartOptions{ID: "after-bad-input"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := run.Get(ctx); err != nil {
		t.Fatalf("saga after bad input: %v", err)
	}
	data, code, _ := apiCall(t, nc, "describe", []byte(`{"id":"after-bad-input"}`))
	var d saga.Description
	if err := json.Unmarshal(data, &d); code != "" || err != nil || d.Status != saga.StatusCompleted {
		t.Fatalf("API describe: %s %v %s", code, err, data)
	}
	if node.Stats().ActivitiesRun != 3 {
		t.Fatalf("node ran %d activities; the bad tasks must not run", node.Stats().ActivitiesRun)
	}

	// A foreign message in an existing history: the saga describes as
	// blocked (history unreadable) up to the bad message, and Wait says so
	// instead of waiting forever.
	publish(t, cfg.HistorySubject("after-bad-input"), []byte("garbage"), "undecodable history message")
	d2, err := cl.Wait(ctx, "after-bad-input")
	if err != nil {
		t.Fatal(err)
	}
	if d2.Status != saga.StatusBlocked || d2.Blocked.Reason != "history_unreadable" || d2.Blocked.AtEventID != 13 ||
		!strings.Contains(d2.Blocked.Message, "stream sequence") {
		t.Fatalf("describe after a foreign message: %s %+v", d2.Status, d2.Blocked)
	}

	// Each malformed message is in the dead-letter stream with its reason,
	// once, and the command line lists them.
	var dead []stream.DeadLetter
	natstest.WaitFor(t, 20*time.Second, "every malformed message in the dead-letter stream", func() bool {
		dead, err = st.DeadLetters(ctx, 0)
		return err == nil && len(dead) >= len(wantDead)
	})
	if len(dead) != len(wantDead) {
		t.Fatalf("%d dead letters, want %d: %+v", len(dead), len(wantDead), dead)
	}
	for _, dl := range dead {
		reason, ok := wantDead[dl.Stream+":"+strconv.FormatUint(dl.Sequence, 10)]
		if !ok || !strings.HasPrefix(dl.Reason, reason) || dl.Node == "" || dl.Size != len(dl.Data) {
			t.Errorf("dead letter %s:%d %q (want %q)", dl.Stream, dl.Sequence, dl.Reason, reason)
		}
	}
	var out, errOut bytes.Buffer
	exit := cli.Run(ctx, []string{"dead-letters", "--json", "--nats-url", c.srv.ClientURL()}, cli.Env{Stdout: &out, Stderr: &errOut})
	var listed []map[string]any
	if err := json.Unmarshal(out.Bytes(), &listed); exit != cli.ExitOK || err != nil || len(listed) != len(wantDead) {
		t.Fatalf("saga-node dead-letters --json: exit %d, %v: %s %s", exit, err, out.String(), errOut.String())
	}
	for _, l := range listed {
		for _, key := range []string{"subject", "stream", "sequence", "reason", "time", "size"} {
			if _, ok := l[key]; !ok {
				t.Errorf("listed dead letter lacks %q: %v", key, l)
			}
		}
	}

	// And the node still completes sagas.
	run, err = saga.StartWorkflow(ctx, cl, order.Workflow, orderInput("last"), saga.StartOptions{ID: "after-dead-letters"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := run.Get(ctx); err != nil {
		t.Fatalf("saga after dead letters: %v", err)
	}
}
