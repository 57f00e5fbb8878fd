package cli

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/jetsaga/saga/internal/embeddednats"
	"github.com/jetsaga/saga/internal/natstest"
)

// connectWith parses args as a command's connection flags and connects.
func connectWith(t *testing.T, getenv func(string) string, args ...string) error {
	t.Helper()
	fs := newFlagSet("test", Env{Stderr: &syncBuffer{}})
	var conn connFlags
	conn.register(fs, Env{Getenv: getenv})
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	nc, err := conn.connect("test")
	if err == nil {
		nc.Close()
	}
	return err
}

func authServer(t *testing.T, configure func(*server.Options)) string {
	t.Helper()
	return natstest.Start(t, func(o *embeddednats.Options) { o.Configure = configure }).ClientURL()
}

func TestConnectionFlagsAuthenticate(t *testing.T) {
	t.Run("user and password", func(t *testing.T) {
		url := authServer(t, func(o *server.Options) {
			o.Users = []*server.User{{Username: "node", Password: "s3cret"}}
		})
		password := func(k string) string {
			if k == "SAGA_NATS_PASSWORD" {
				return "s3cret"
			}
			return ""
		}
		if err := connectWith(t, password, "--nats-url", url, "--nats-user", "node"); err != nil {
			t.Errorf("password from the environment: %v", err)
		}
		if err := connectWith(t, noEnv, "--nats-url", url, "--nats-user", "node", "--nats-password", "s3cret"); err != nil {
			t.Errorf("password from the flag: %v", err)
		}
		if err := connectWith(t, noEnv, "--nats-url", url, "--nats-user", "node", "--nats-password", "wrong"); err == nil {
			t.Error("a wrong password connected")
		}
		if err := connectWith(t, noEnv, "--nats-url", url); err == nil {
			t.Error("no credentials connected")
		}
	})
	t.Run("token", func(t *testing.T) {
		url := authServer(t, func(o *server.Options) { o.Authorization = "t0ken" })
		token := func(k string) string {
			if k == "SAGA_NATS_TOKEN" {
				return "t0ken"
			}
			return ""
		}
		if err := connectWith(t, token, "--nats-url", url); err != nil {
			t.Errorf("token from the environment: %v", err)
		}
		if err := connectWith(t, noEnv, "--nats-url", url, "--nats-token", "other"); err == nil {
			t.Error("a wrong token connected")
		}
	})
	t.Run("nkey", func(t *testing.T) {
		user, err := nkeys.CreateUser()
		if err != nil {
			t.Fatal(err)
		}
		pub, _ := user.PublicKey()
		seed, _ := user.Seed()
		seedFile := filepath.Join(t.TempDir(), "node.nk")
		if err := os.WriteFile(seedFile, seed, 0o600); err != nil {
			t.Fatal(err)
		}
		url := authServer(t, func(o *server.Options) { o.Nkeys = []*server.NkeyUser{{Nkey: pub}} })
		if err := connectWith(t, noEnv, "--nats-url", url, "--nats-nkey", seedFile); err != nil {
			t.Errorf("nkey: %v", err)
		}
		if err := connectWith(t, noEnv, "--nats-url", url); err == nil {
			t.Error("no nkey connected")
		}
	})
	t.Run("mutual TLS", func(t *testing.T) {
		dir := t.TempDir()
		ca := newTestCA(t)
		serverCert := ca.issue(t, "server", x509.ExtKeyUsageServerAuth)
		clientCert := ca.issue(t, "node", x509.ExtKeyUsageClientAuth)
		caFile := writePEM(t, dir, "ca.pem", "CERTIFICATE", ca.cert.Raw)
		certFile := writePEM(t, dir, "node.pem", "CERTIFICATE", clientCert.Certificate[0])
		keyDER, err := x509.MarshalPKCS8PrivateKey(clientCert.PrivateKey)
		if err != nil {
			t.Fatal(err)
		}
		keyFile := writePEM(t, dir, "node-key.pem", "PRIVATE KEY", keyDER)
		pool := x509.NewCertPool()
		pool.AddCert(ca.cert)
		url := authServer(t, func(o *server.Options) {
			o.TLS, o.TLSVerify = true, true
			o.TLSConfig = &tls.Config{Certificates: []tls.Certificate{serverCert}, ClientCAs: pool,
				ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS12}
		})
		if err := connectWith(t, noEnv, "--nats-url", url, "--tls-ca", caFile, "--tls-cert", certFile, "--tls-key", keyFile); err != nil {
			t.Errorf("mutual TLS: %v", err)
		}
		if err := connectWith(t, noEnv, "--nats-url", url, "--tls-ca", caFile); err == nil {
			t.Error("no client certificate connected")
		}
	})
}

func TestConnectionFlagsRefuseConflicts(t *testing.T) {
	for _, args := range [][]string{
		{"--nats-user", "a"},     // no password
		{"--nats-password", "p"}, // no user
		{"--nats-user", "a", "--nats-password", "p", "--nats-token", "t"}, // two methods
		{"--tls-cert", "c.pem"}, // no key
		{"--nats-nkey", filepath.Join(t.TempDir(), "missing.nk")},
	} {
		err := connectWith(t, noEnv, append([]string{"--nats-url", "nats://127.0.0.1:1"}, args...)...)
		if !errors.Is(err, errUsage) {
			t.Errorf("%v: %v, want a usage error", args, err)
		}
	}
	// The embedded server has no users: credentials for it are a mistake.
	r := runCLI(t, noEnv, "run", "--data", t.TempDir(), "--listen", "127.0.0.1:0", "--nats-token", "t")
	expectCode(t, r, ExitUsage)
	if !strings.Contains(r.stderr, "--nats-url") {
		t.Errorf("stderr: %s", r.stderr)
	}
}

type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &testCA{cert: cert, key: key}
}

func (ca *testCA) issue(t *testing.T, name string, usage x509.ExtKeyUsage) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: []string{"localhost"}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func writePEM(t *testing.T, dir, name, typ string, der []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestNATSURLsAreRedacted(t *testing.T) {
	got := redactURLs("nats://node:s3cret@a:4222,nats://t0ken@b:4222,nats://c:4222")
	if strings.Contains(got, "s3cret") || strings.Contains(got, "t0ken") || !strings.Contains(got, "nats://c:4222") {
		t.Errorf("redacted: %s", got)
	}
	err := connectWith(t, noEnv, "--nats-url", "nats://node:s3cret@127.0.0.1:1")
	if err == nil || strings.Contains(err.Error(), "s3cret") {
		t.Errorf("connection error: %v", err)
	}
}

func TestLogFormat(t *testing.T) {
	var buf syncBuffer
	log, err := newFormattedLogger(&buf, slog.LevelInfo, "json")
	if err != nil {
		t.Fatal(err)
	}
	log.Info("node started", "node", "n1")
	var rec map[string]any
	if err := json.Unmarshal([]byte(buf.String()), &rec); err != nil || rec["msg"] != "node started" || rec["node"] != "n1" {
		t.Fatalf("a JSON log line: %q (%v)", buf.String(), err)
	}
	r := runCLI(t, noEnv, "run", "--data", t.TempDir(), "--listen", "127.0.0.1:0", "--log-format", "yaml")
	expectCode(t, r, ExitUsage)
	if !strings.Contains(r.stderr, "--log-format") {
		t.Errorf("stderr: %s", r.stderr)
	}
}

// A user allowed only inboxes of its own prefix (the client roles of
// docs/security.md) gets its replies with --nats-inbox-prefix.
func TestInboxPrefixFlag(t *testing.T) {
	url := authServer(t, func(o *server.Options) {
		o.Users = []*server.User{
			{Username: "svc", Password: "s"},
			{Username: "cli", Password: "c", Permissions: &server.Permissions{
				Publish:   &server.SubjectPermission{Allow: []string{"echo"}},
				Subscribe: &server.SubjectPermission{Allow: []string{"_INBOX_cli.>"}},
			}},
		}
	})
	svc, err := nats.Connect(url, nats.UserInfo("svc", "s"))
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Close()
	if _, err := svc.Subscribe("echo", func(m *nats.Msg) { _ = m.Respond(m.Data) }); err != nil {
		t.Fatal(err)
	}
	if err := svc.Flush(); err != nil {
		t.Fatal(err)
	}
	request := func(args ...string) error {
		fs := newFlagSet("test", Env{Stderr: &syncBuffer{}})
		var conn connFlags
		conn.register(fs, Env{Getenv: noEnv})
		if err := fs.Parse(append([]string{"--nats-url", url, "--nats-user", "cli", "--nats-password", "c"}, args...)); err != nil {
			t.Fatal(err)
		}
		nc, err := conn.connect("test")
		if err != nil {
			return err
		}
		defer nc.Close()
		_, err = nc.Request("echo", []byte("hi"), time.Second)
		return err
	}
	if err := request("--nats-inbox-prefix", "_INBOX_cli"); err != nil {
		t.Errorf("with its inbox prefix: %v", err)
	}
	if err := request(); err == nil {
		t.Error("a reply reached an inbox the user may not subscribe to")
	}
}
