package embeddednats_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/jetsaga/saga/internal/embeddednats"
	"github.com/jetsaga/saga/internal/natstest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestStartServesJetStream(t *testing.T) {
	srv, err := embeddednats.Start(embeddednats.Options{Dir: t.TempDir(), Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown()
	if !strings.HasPrefix(srv.ClientURL(), "nats://127.0.0.1:") {
		t.Fatalf("client URL %q", srv.ClientURL())
	}
	nc, err := srv.Connect()
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.AccountInfo(context.Background()); err != nil {
		t.Fatalf("JetStream: %v", err)
	}
}

// A port already in use is reported at once with the server's reason,
// not after the ready timeout.
func TestStartReportsAPortInUse(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	_, err = embeddednats.Start(embeddednats.Options{Dir: t.TempDir(), Listen: l.Addr().String()})
	if err == nil || !strings.Contains(err.Error(), "address already in use") {
		t.Fatalf("got %v", err)
	}
}

// Configure reaches settings Options does not name: here, users, so that
// a connection without credentials is refused and one with them is not.
func TestConfigureSetsServerOptions(t *testing.T) {
	srv, err := embeddednats.Start(embeddednats.Options{Dir: t.TempDir(), Listen: "127.0.0.1:0", Configure: func(o *server.Options) {
		o.Users = []*server.User{{Username: "node", Password: "secret"}}
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown()
	if nc, err := nats.Connect(srv.ClientURL()); !errors.Is(err, nats.ErrAuthorization) {
		if nc != nil {
			nc.Close()
		}
		t.Fatalf("connect without credentials: %v, want %v", err, nats.ErrAuthorization)
	}
	nc, err := nats.Connect(srv.ClientURL(), nats.UserInfo("node", "secret"))
	if err != nil {
		t.Fatal(err)
	}
	nc.Close()
}

func TestStartNeedsADirectory(t *testing.T) {
	if _, err := embeddednats.Start(embeddednats.Options{}); err == nil {
		t.Fatal("started without a directory")
	}
}

// Three servers given each other's routes form a JetStream cluster that
// replicates a stream on all of them.
func TestClusterReplicatesStreams(t *testing.T) {
	// Every member is configured with every route, so the route ports are
	// picked before any server starts, and each is held until its server
	// takes it: the routes the others dial meanwhile use ephemeral ports.
	routes := make([]string, 3)
	held := make([]net.Listener, len(routes))
	for i := range routes {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		held[i] = l
		routes[i] = "nats://" + l.Addr().String()
	}
	servers := make([]*embeddednats.Server, len(routes))
	for i, route := range routes {
		held[i].Close()
		srv, err := embeddednats.Start(embeddednats.Options{
			Dir: t.TempDir(), Listen: "127.0.0.1:0", ServerName: fmt.Sprintf("member-%d", i),
			Cluster: &embeddednats.ClusterOptions{Name: "test", Listen: strings.TrimPrefix(route, "nats://"), Routes: routes},
		})
		if err != nil {
			t.Fatal(err)
		}
		defer srv.Shutdown()
		if srv.ClusterURL() != route || srv.Name() != fmt.Sprintf("member-%d", i) {
			t.Fatalf("server %d: cluster URL %q, name %q", i, srv.ClusterURL(), srv.Name())
		}
		servers[i] = srv
	}
	nc, err := servers[0].Connect()
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	// Until the cluster has elected its metadata leader (in a second or
	// so) requests go unanswered or fail.
	var info *jetstream.StreamInfo
	natstest.WaitFor(t, 30*time.Second, "a replicated stream to be created", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		s, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "R3", Subjects: []string{"r3"}, Replicas: 3})
		if err != nil {
			return false
		}
		info = s.CachedInfo()
		return true
	})
	if info.Cluster == nil || info.Cluster.Name != "test" || info.Cluster.Leader == "" || len(info.Cluster.Replicas) != 2 {
		t.Fatalf("stream cluster info %+v", info.Cluster)
	}
}

func TestClusterOptionsAreChecked(t *testing.T) {
	for name, c := range map[string]embeddednats.ClusterOptions{
		"no name":   {Listen: "127.0.0.1:0", Routes: []string{"nats://127.0.0.1:1"}},
		"no listen": {Name: "c", Routes: []string{"nats://127.0.0.1:1"}},
		"no routes": {Name: "c", Listen: "127.0.0.1:0"},
		"bad route": {Name: "c", Listen: "127.0.0.1:0", Routes: []string{"127.0.0.1"}},
	} {
		if _, err := embeddednats.Start(embeddednats.Options{Dir: t.TempDir(), Cluster: &c}); err == nil {
			t.Errorf("%s: started", name)
		}
	}
}
