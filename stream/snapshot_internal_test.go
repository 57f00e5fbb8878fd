package stream

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

var writeSnapshotShape = flag.Bool("write-snapshot-shape", false,
	"write testdata/snapshot/state-v<SnapshotVersion>.txt when it does not exist yet")

// stateShape describes a type as a snapshot depends on it: every field,
// its type and its tags, down through every type it holds (named types by
// name too: a Payload encodes unlike a []byte).
func stateShape(t reflect.Type, indent string, seen map[reflect.Type]bool) string {
	name := ""
	if t.Name() != "" {
		name = t.String() + " "
	}
	switch t.Kind() {
	case reflect.Pointer:
		return "*" + stateShape(t.Elem(), indent, seen)
	case reflect.Slice:
		return name + "[]" + stateShape(t.Elem(), indent, seen)
	case reflect.Map:
		return name + "map[" + stateShape(t.Key(), indent, seen) + "]" + stateShape(t.Elem(), indent, seen)
	case reflect.Struct:
		if t == reflect.TypeFor[time.Time]() || seen[t] {
			return t.String()
		}
		seen[t] = true
		var b strings.Builder
		fmt.Fprintf(&b, "%s{\n", name)
		for f := range t.Fields() {
			fmt.Fprintf(&b, "%s\t%s %s `%s` embedded=%t\n", indent, f.Name, stateShape(f.Type, indent+"\t", seen), f.Tag, f.Anonymous)
		}
		b.WriteString(indent + "}")
		return b.String()
	}
	return name + "(" + t.Kind().String() + ")"
}

// A snapshot of one version must never be read as another's State: when
// State, or a type it holds, changes shape, this fails until
// SnapshotVersion is raised (and the snapshot carries the change, which
// TestSnapshotCarriesEveryStateField checks). Then run it once with
// -write-snapshot-shape to record the new version's shape.
func TestSnapshotVersionFollowsTheStateShape(t *testing.T) {
	shape := stateShape(reflect.TypeFor[State](), "", map[reflect.Type]bool{}) + "\n"
	path := filepath.Join("testdata", "snapshot", fmt.Sprintf("state-v%d.txt", SnapshotVersion))
	recorded, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) && *writeSnapshotShape {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(shape), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	if err != nil {
		t.Fatalf("%v: record the shape of snapshot version %d with -write-snapshot-shape", err, SnapshotVersion)
	}
	if string(recorded) != shape {
		t.Fatalf("State changed shape since snapshot version %d (%s): carry the change in the snapshot, raise SnapshotVersion, "+
			"and record the new shape with -write-snapshot-shape.\nnow:\n%s", SnapshotVersion, path, shape)
	}
}

// The snapshots bucket keeps the history it was created with: a node
// asking for another keeps it (and says so), and a history a bucket
// cannot have is refused with the setting named.
func TestEnsureSnapshotBucketKeepsItsHistory(t *testing.T) {
	_, js := setupJetStream(t)
	ctx := setupContext(t, 10*time.Second)
	cfg := Config{}.Defaults()
	kv, err := EnsureSnapshotBucket(ctx, js, cfg, 3, 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	status, err := kv.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if status.History() != 3 || status.Bucket() != "SAGA_SNAPSHOTS" {
		t.Fatalf("bucket %s with history %d, want SAGA_SNAPSHOTS with 3", status.Bucket(), status.History())
	}

	log, logged := capturedLog()
	if _, err := EnsureSnapshotBucket(ctx, js, cfg, 7, 1, log); err != nil {
		t.Fatal(err)
	}
	if got := streamInfo(t, ctx, js, "KV_SAGA_SNAPSHOTS").MaxMsgsPerSubject; got != 3 {
		t.Fatalf("history became %d, want it left at 3", got)
	}
	if lines := logged.lines(); len(lines) != 1 || !strings.Contains(lines[0], "setting=\"history (max_msgs_per_subject)\" existing=3 this_node=7") {
		t.Errorf("want one line about the history kept, logged:\n%s", strings.Join(lines, "\n"))
	}

	t.Run("unlimited history is refused", func(t *testing.T) {
		other := Config{Prefix: "acme"}.Defaults()
		sc := keyValueStreamConfig(jetstream.KeyValueConfig{Bucket: other.SnapshotsBucket(), History: 1})
		sc.MaxMsgsPerSubject = -1
		if _, err := js.CreateStream(ctx, sc); err != nil {
			t.Fatal(err)
		}
		_, err := EnsureSnapshotBucket(ctx, js, other, 5, 1, nil)
		wantRefusal(t, err, "bucket ACME_SNAPSHOTS (stream KV_ACME_SNAPSHOTS): history (max_msgs_per_subject) is unlimited, the engine needs 1 to 64")
	})
	t.Run("an impossible history is not asked for", func(t *testing.T) {
		if _, err := EnsureSnapshotBucket(ctx, js, cfg, 65, 1, nil); err == nil {
			t.Fatal("a history of 65 was accepted")
		}
	})
}
