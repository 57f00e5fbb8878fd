package cli

// No container engine runs where the tests do, so docker-compose.yml, the
// Dockerfile and deploy/ are checked here statically, against the code
// they configure: the flags of "saga-node run" as its own flag set parses
// them, the NATS configurations as nats-server itself reads them, and the
// Go and nats-server versions of go.mod.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/goccy/go-yaml"
	"github.com/nats-io/nats-server/v2/server"
)

// repoRoot is where docker-compose.yml resolves its relative paths; the
// tests of this package run in cli/.
const repoRoot = ".."

func TestDeploymentFiles(t *testing.T) {
	flags := runFlagsFromHelp(t)
	c := loadCompose(t)
	stages := loadDockerfile(t)
	goMod := readRepoFile(t, "go.mod")
	goMinor := firstSubmatch(t, goMod, `(?m)^go (\d+\.\d+)`, "go.mod: go directive")
	natsMinor := firstSubmatch(t, goMod, `github\.com/nats-io/nats-server/v2 v(\d+\.\d+)\.`, "go.mod: nats-server requirement")

	natsNames := c.namesWithPrefix("nats-")
	nodeNames := c.namesWithPrefix("saga-node")
	if len(natsNames) != 3 {
		t.Fatalf("docker-compose.yml: want 3 NATS services (nats-1, nats-2, nats-3), got %d: %v", len(natsNames), natsNames)
	}
	if len(nodeNames) != 2 {
		t.Fatalf("docker-compose.yml: want 2 saga-node services, got %d: %v", len(nodeNames), nodeNames)
	}
	for _, name := range []string{"postgres", "prometheus"} {
		if c.Services[name] == nil {
			t.Fatalf("docker-compose.yml: no %q service (services: %v)", name, c.namesWithPrefix(""))
		}
	}

	// NATS servers as nats-server reads their configuration files.
	natsOpts := map[string]*server.Options{}
	t.Run("nats", func(t *testing.T) {
		serverNames := map[string]string{}
		clusterNames := map[string]bool{}
		for _, name := range natsNames {
			s := c.Services[name]
			where := "docker-compose.yml: service " + name
			repo, tag := splitImage(s.Image)
			if path.Base(repo) != "nats" {
				t.Errorf("%s: image %q is not the official nats image", where, s.Image)
			}
			if !strings.HasPrefix(tag, natsMinor+".") && !strings.HasPrefix(tag, natsMinor+"-") {
				t.Errorf("%s: image %q: want nats %s.x, the nats-server release go.mod's tests run against", where, s.Image, natsMinor)
			}
			if !strings.Contains(tag, "alpine") {
				t.Errorf("%s: image %q: want an alpine variant; the health check runs busybox wget, which the scratch image lacks", where, s.Image)
			}
			opts := natsConfig(t, c, name)
			if opts == nil {
				continue
			}
			natsOpts[name] = opts
			if !opts.JetStream {
				t.Errorf("%s: its configuration does not enable JetStream", where)
			}
			if !opts.SyncAlways {
				t.Errorf("%s: its configuration lacks jetstream { sync_interval: always }: the default fsyncs every 2 minutes and loses acknowledged writes on an OS crash or power loss", where)
			}
			if !s.onNamedVolume(c, opts.StoreDir) {
				t.Errorf("%s: JetStream store_dir %q is not on a named volume declared under volumes: (mounts: %v)", where, opts.StoreDir, s.Volumes)
			}
			if opts.ServerName == "" {
				t.Errorf("%s: no server_name; a JetStream cluster needs unique ones", where)
			} else if other, dup := serverNames[opts.ServerName]; dup {
				t.Errorf("%s: server_name %q is also %s's", where, opts.ServerName, other)
			} else {
				serverNames[opts.ServerName] = name
			}
			if opts.Cluster.Name == "" || opts.Cluster.Port == 0 {
				t.Errorf("%s: no cluster block with a name and a listen port", where)
			}
			clusterNames[opts.Cluster.Name] = true
			if opts.HTTPPort <= 0 {
				t.Errorf("%s: monitoring (http) is off; the health check needs /healthz", where)
			} else {
				s.requireHealthcheck(t, where, fmt.Sprintf(":%d/healthz", opts.HTTPPort))
			}
		}
		if len(clusterNames) > 1 {
			t.Errorf("deploy/nats: the servers name different clusters: %v", clusterNames)
		}
		for _, a := range natsNames {
			for _, b := range natsNames {
				if a == b || natsOpts[a] == nil || natsOpts[b] == nil {
					continue
				}
				if !routesTo(natsOpts[a].Routes, b, natsOpts[b].Cluster.Port) {
					t.Errorf("%s has no cluster route to %s:%d (routes: %v)", a, b, natsOpts[b].Cluster.Port, natsOpts[a].Routes)
				}
			}
		}
	})

	t.Run("postgres", func(t *testing.T) {
		s := c.Services["postgres"]
		where := "docker-compose.yml: service postgres"
		if repo, _ := splitImage(s.Image); path.Base(repo) != "postgres" {
			t.Errorf("%s: image %q is not the official postgres image", where, s.Image)
		}
		pgdata := s.Environment["PGDATA"]
		if pgdata == "" {
			pgdata = "/var/lib/postgresql/data"
		}
		if !s.onNamedVolume(c, pgdata) {
			t.Errorf("%s: its data directory %s is not on a named volume (mounts: %v)", where, pgdata, s.Volumes)
		}
		s.requireHealthcheck(t, where, "pg_isready")
	})

	// The metrics port of each saga-node service, for the Prometheus and
	// Dockerfile checks.
	metricsPorts := map[string]string{}
	t.Run("saga-node", func(t *testing.T) {
		nodeNameOf := map[string]string{}
		for _, name := range nodeNames {
			s := c.Services[name]
			where := "docker-compose.yml: service " + name
			checkBuild(t, c, name, nodeNames)
			if len(s.Entrypoint) > 0 {
				t.Errorf("%s: sets an entrypoint %q; the command must reach the image's saga-node", where, s.Entrypoint)
			}
			if len(s.Command) == 0 || s.Command[0] != "run" {
				t.Errorf("%s: command %q does not start with \"run\"", where, s.Command)
				continue
			}
			vals, problems := checkRunArgs(flags, s.Command[1:])
			for _, p := range problems {
				t.Errorf("%s: %s", where, p)
			}
			for _, dep := range append(slices.Clone(natsNames), "postgres") {
				if cond := s.DependsOn[dep]; cond != "service_healthy" {
					t.Errorf("%s: depends_on %s: want condition service_healthy, got %q", where, dep, cond)
				}
			}

			if n := vals["name"]; n != "" {
				if other, dup := nodeNameOf[n]; dup {
					t.Errorf("%s: --name %q is also %s's", where, n, other)
				}
				nodeNameOf[n] = name
			}
			if r := vals["replicas"]; r != strconv.Itoa(len(natsNames)) {
				t.Errorf("%s: --replicas %q: want %d, one replica per NATS server, so that a server may fail", where, r, len(natsNames))
			}
			checkNATSURL(t, where, vals["nats-url"], natsNames, natsOpts)
			checkPGURL(t, where, vals["pg-url"], c.Services["postgres"].Environment)

			listen, ok := vals["metrics-listen"]
			if !ok {
				t.Errorf("%s: no --metrics-listen: Prometheus and the health check have nothing to reach", where)
				continue
			}
			host, port, err := net.SplitHostPort(listen)
			if err != nil {
				t.Errorf("%s: --metrics-listen %q: %v", where, listen, err)
				continue
			}
			if host != "" && host != "0.0.0.0" && host != "::" {
				t.Errorf("%s: --metrics-listen %q: listen on all interfaces (0.0.0.0), or Prometheus cannot reach it from its container", where, listen)
			}
			metricsPorts[name] = port
			if !slices.Contains(s.containerPorts(), port) {
				t.Errorf("%s: metrics port %s is neither published (ports) nor exposed (expose): %v", where, port, s.containerPorts())
			}
			s.requireHealthcheck(t, where, "127.0.0.1:"+port+"/healthz")

			drain := vals["drain-timeout"]
			if drain == "" {
				drain = flags["drain-timeout"].def
			}
			d, err := time.ParseDuration(drain)
			if err != nil {
				t.Errorf("%s: cannot tell the node's drain timeout from %q: %v", where, drain, err)
				continue
			}
			grace := 10 * time.Second // compose's default
			if s.StopGracePeriod != "" {
				if grace, err = time.ParseDuration(s.StopGracePeriod); err != nil {
					t.Errorf("%s: stop_grace_period %q: %v", where, s.StopGracePeriod, err)
					continue
				}
			}
			if grace <= d {
				t.Errorf("%s: stop_grace_period %s is not longer than the node's drain timeout %s: a stop would kill work in progress", where, grace, d)
			}
		}
	})

	t.Run("prometheus", func(t *testing.T) {
		s := c.Services["prometheus"]
		where := "docker-compose.yml: service prometheus"
		if repo, _ := splitImage(s.Image); repo != "prom/prometheus" {
			t.Errorf("%s: image %q is not prom/prometheus", where, s.Image)
		}
		confPath := "/etc/prometheus/prometheus.yml" // the image's default
		if v, ok := flagValue(s.Command, "--config.file"); ok {
			confPath = v
		}
		local := s.boundFile(confPath)
		if local == "" {
			t.Fatalf("%s: no file of the repository is mounted at its configuration %s (mounts: %v)", where, confPath, s.Volumes)
		}
		var conf struct {
			ScrapeConfigs []struct {
				JobName       string `yaml:"job_name"`
				MetricsPath   string `yaml:"metrics_path"`
				Scheme        string `yaml:"scheme"`
				StaticConfigs []struct {
					Targets []string `yaml:"targets"`
				} `yaml:"static_configs"`
			} `yaml:"scrape_configs"`
		}
		if err := yaml.Unmarshal(readRepoFile(t, local), &conf); err != nil {
			t.Fatalf("%s: %v", local, err)
		}
		for _, name := range nodeNames {
			port, ok := metricsPorts[name]
			if !ok {
				continue // reported by the saga-node checks
			}
			target := name + ":" + port
			found := false
			for _, sc := range conf.ScrapeConfigs {
				if sc.MetricsPath != "" && sc.MetricsPath != "/metrics" || sc.Scheme != "" && sc.Scheme != "http" {
					continue
				}
				for _, st := range sc.StaticConfigs {
					found = found || slices.Contains(st.Targets, target)
				}
			}
			if !found {
				t.Errorf("%s: no scrape job reads http://%s/metrics", local, target)
			}
		}
	})

	t.Run("dockerignore", checkDockerignore)

	t.Run("Dockerfile", func(t *testing.T) {
		if len(stages) < 2 {
			t.Fatalf("Dockerfile: %d stage(s); want a build stage and a small final stage", len(stages))
		}
		final := stages[len(stages)-1]
		build, src, dst := final.copiedBinary(stages)
		if build == nil {
			t.Fatalf("Dockerfile: the final stage copies no saga-node binary from a build stage (COPY --from=...)")
		}
		if repo, tag := splitImage(build.base); repo != "golang" || tag != goMinor && !strings.HasPrefix(tag, goMinor+".") && !strings.HasPrefix(tag, goMinor+"-") {
			t.Errorf("Dockerfile: build stage FROM %s: want golang:%s, the Go release of go.mod", build.base, goMinor)
		}
		goBuild, cgoOff := "", false
		for _, in := range build.instrs {
			switch {
			case in.cmd == "ENV" && (strings.Contains(in.args, "CGO_ENABLED=0") || strings.Join(strings.Fields(in.args), " ") == "CGO_ENABLED 0"):
				cgoOff = true
			case in.cmd == "RUN" && strings.Contains(in.args, "go build"):
				goBuild = in.args
				cgoOff = cgoOff || strings.Contains(in.args, "CGO_ENABLED=0")
			}
		}
		switch {
		case goBuild == "":
			t.Errorf("Dockerfile: the build stage runs no go build")
		case !cgoOff:
			t.Errorf("Dockerfile: go build runs without CGO_ENABLED=0; the binary would need the build image's libc: %s", goBuild)
		case !strings.Contains(goBuild, "-trimpath") || !strings.Contains(goBuild, "./cmd/saga-node"):
			t.Errorf("Dockerfile: want go build -trimpath ./cmd/saga-node, got %s", goBuild)
		case !strings.Contains(goBuild, "-o "+src) && !strings.Contains(goBuild, "-o="+src):
			t.Errorf("Dockerfile: the final stage copies %s, which go build does not write (%s)", src, goBuild)
		}

		user := ""
		for _, in := range final.instrs {
			if in.cmd == "USER" {
				user, _, _ = strings.Cut(in.args, ":")
			}
		}
		if user == "" || user == "root" || user == "0" {
			t.Errorf("Dockerfile: the final stage runs as root (USER %q); want a non-root USER", user)
		}
		entry, ok := execForm(final.last("ENTRYPOINT"))
		bin := dst
		if strings.HasSuffix(dst, "/") {
			bin = path.Join(dst, path.Base(src))
		}
		if !ok || len(entry) == 0 || entry[0] != bin {
			t.Errorf("Dockerfile: ENTRYPOINT %q: want the exec form [%q], the binary the final stage copies", final.last("ENTRYPOINT"), bin)
		}
		exposed := strings.Fields(final.all("EXPOSE"))
		for i := range exposed {
			exposed[i] = strings.TrimSuffix(exposed[i], "/tcp")
		}
		for name, port := range metricsPorts {
			if !slices.Contains(exposed, port) {
				t.Errorf("Dockerfile: EXPOSE %v lacks metrics port %s of %s", exposed, port, name)
			}
		}
		if cmd, ok := execForm(final.last("CMD")); ok && len(cmd) > 0 && cmd[0] == "run" {
			if _, problems := checkRunArgs(flags, cmd[1:]); len(problems) > 0 {
				t.Errorf("Dockerfile: CMD %q: %s", cmd, strings.Join(problems, "; "))
			}
			// The embedded server has no authentication: it must not be
			// reachable from outside the container.
			if _, urlSet := flagValue(cmd[1:], "--nats-url"); !urlSet {
				listen, _ := flagValue(cmd[1:], "--listen")
				if host, _, err := net.SplitHostPort(listen); err != nil || (host != "127.0.0.1" && host != "localhost" && host != "::1") {
					t.Errorf("Dockerfile: CMD %q: the embedded nats-server listens on %q; it has no authentication, keep it on loopback", cmd, listen)
				}
			}
		}
		if repo, _ := splitImage(final.base); repo != "alpine" && repo != "busybox" {
			for _, name := range nodeNames {
				if h := c.Services[name].Healthcheck; h != nil && h.program() == "wget" {
					t.Errorf("Dockerfile: final stage FROM %s has no busybox wget, which %s's health check runs", final.base, name)
				}
			}
		}
	})
}

// checkDockerignore checks that .dockerignore keeps in the build context
// every file of the module that building saga-node reads.
func checkDockerignore(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "list", "-deps", "-f",
		`{{if and .Module .Module.Main}}{{.Dir}}{{range .GoFiles}} {{.}}{{end}}{{range .EmbedFiles}} {{.}}{{end}}{{end}}`,
		"./cmd/saga-node")
	cmd.Dir = repoRoot
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list ./cmd/saga-node: %v\n%s", err, stderr.String())
	}
	root, err := filepath.Abs(repoRoot)
	if err != nil {
		t.Fatal(err)
	}
	needed := []string{"go.mod", "go.sum"}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		dir, err := filepath.Rel(root, f[0])
		if err != nil {
			t.Fatal(err)
		}
		for _, name := range f[1:] {
			needed = append(needed, filepath.ToSlash(filepath.Join(dir, name)))
		}
	}
	if len(needed) < 10 {
		t.Fatalf("go list found only %v", needed)
	}
	patterns := strings.Split(string(readRepoFile(t, ".dockerignore")), "\n")
	left := map[string][]string{}
	for _, file := range needed {
		if p := dockerignored(patterns, file); p != "" {
			left[p] = append(left[p], file)
		}
	}
	for p, files := range left {
		t.Errorf(".dockerignore: %q leaves %d file(s) that building saga-node needs out of the build context, such as %s", p, len(files), files[0])
	}
}

// dockerignored returns the .dockerignore pattern that excludes file (a
// slash-separated path in the context), or "". As Docker does, a pattern
// excludes what it matches and all below it; the last matching line wins,
// and a "!" line includes again.
func dockerignored(lines []string, file string) string {
	excludedBy := ""
	for _, line := range lines {
		p := strings.TrimSpace(line)
		if p == "" || strings.HasPrefix(p, "#") {
			continue
		}
		include := strings.HasPrefix(p, "!")
		p = path.Clean(strings.TrimPrefix(strings.TrimPrefix(p, "!"), "/"))
		var re strings.Builder
		for i := 0; i < len(p); i++ {
			switch {
			case strings.HasPrefix(p[i:], "**/"):
				re.WriteString("(.*/)?")
				i += 2
			case strings.HasPrefix(p[i:], "**"):
				re.WriteString(".*")
				i++
			case p[i] == '*':
				re.WriteString("[^/]*")
			case p[i] == '?':
				re.WriteString("[^/]")
			default:
				re.WriteString(regexp.QuoteMeta(p[i : i+1]))
			}
		}
		if regexp.MustCompile("^" + re.String() + "(/.*)?$").MatchString(file) {
			excludedBy = p
			if include {
				excludedBy = ""
			}
		}
	}
	return excludedBy
}

// runFlag is one flag of "saga-node run", as its usage describes it.
type runFlag struct {
	isBool bool
	def    string
}

// runFlagsFromHelp reads the flags of "saga-node run" from the usage its
// own flag set prints, so that the check follows the code.
func runFlagsFromHelp(t *testing.T) map[string]runFlag {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var stdout, stderr bytes.Buffer
	if code := Run(ctx, []string{"run", "-h"}, Env{Stdout: &stdout, Stderr: &stderr, Getenv: noEnv}); code != ExitOK {
		t.Fatalf("saga-node run -h: exit %d\n%s", code, stderr.String())
	}
	// flag.PrintDefaults: "  -name type" (no type for a bool), then the
	// usage indented, ending in "(default X)" when the default is not zero.
	head := regexp.MustCompile(`^  -(\S+)(?: (\S+))?`)
	def := regexp.MustCompile(`\(default (.*)\)$`)
	flags := map[string]runFlag{}
	var cur string
	for _, line := range strings.Split(stderr.String(), "\n") {
		if m := head.FindStringSubmatch(line); m != nil {
			cur = m[1]
			flags[cur] = runFlag{isBool: m[2] == ""}
		}
		if m := def.FindStringSubmatch(line); m != nil && cur != "" {
			f := flags[cur]
			f.def = strings.Trim(m[1], `"`)
			flags[cur] = f
		}
	}
	if len(flags) < 5 || flags["nats-url"].isBool {
		t.Fatalf("saga-node run -h: cannot read the flags from its usage:\n%s", stderr.String())
	}
	return flags
}

// checkRunArgs parses the arguments of "saga-node run" as its flag set
// does, and returns the values given by flag name and what is wrong.
func checkRunArgs(flags map[string]runFlag, args []string) (map[string]string, []string) {
	vals := map[string]string{}
	var problems, unknown []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if !strings.HasPrefix(a, "-") || a == "-" || a == "--" {
			problems = append(problems, fmt.Sprintf("argument %q is not a flag (run takes none)", a))
			continue
		}
		name, val, hasVal := strings.Cut(strings.TrimLeft(a, "-"), "=")
		f, ok := flags[name]
		if !ok {
			unknown = append(unknown, "--"+name)
			// Its value is still read, so that the checks of what it says
			// run too.
			f.isBool = i+1 == len(args) || strings.HasPrefix(args[i+1], "-")
		}
		switch {
		case hasVal:
		case f.isBool:
			val = "true"
		case i+1 == len(args):
			problems = append(problems, fmt.Sprintf("flag --%s has no value", name))
			continue
		default:
			i++
			val = args[i]
		}
		vals[name] = val
	}
	if len(unknown) > 0 {
		known := make([]string, 0, len(flags))
		for name := range flags {
			known = append(known, "--"+name)
		}
		slices.Sort(known)
		problems = append(problems, fmt.Sprintf("saga-node run has no flag %s (it has %s)", strings.Join(unknown, ", "), strings.Join(known, " ")))
	}
	if len(problems) > 0 {
		return vals, problems
	}
	// The flag set itself checks the values: "-h" after them stops the
	// command once they are parsed.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var stdout, stderr bytes.Buffer
	full := append(append([]string{"run"}, args...), "-h")
	if code := Run(ctx, full, Env{Stdout: &stdout, Stderr: &stderr, Getenv: noEnv}); code != ExitOK {
		first, _, _ := strings.Cut(stderr.String(), "\n")
		problems = append(problems, fmt.Sprintf("saga-node run rejects its arguments: %s", first))
	}
	return vals, problems
}

func checkNATSURL(t *testing.T, where, urls string, natsNames []string, opts map[string]*server.Options) {
	t.Helper()
	if urls == "" {
		t.Errorf("%s: no --nats-url: the node would run an embedded server instead of joining the cluster", where)
		return
	}
	reached := map[string]bool{}
	for _, raw := range strings.Split(urls, ",") {
		u, err := url.Parse(strings.TrimSpace(raw))
		if err != nil || u.Scheme != "nats" {
			t.Errorf("%s: --nats-url: %q is not a nats:// URL", where, raw)
			continue
		}
		if !slices.Contains(natsNames, u.Hostname()) {
			t.Errorf("%s: --nats-url: %q is none of the NATS services %v", where, raw, natsNames)
			continue
		}
		want := 4222 // nats-server's default client port
		if o := opts[u.Hostname()]; o != nil && o.Port > 0 {
			want = o.Port
		}
		if p := u.Port(); p != "" && p != strconv.Itoa(want) {
			t.Errorf("%s: --nats-url: %q: %s listens for clients on %d", where, raw, u.Hostname(), want)
		}
		reached[u.Hostname()] = true
	}
	for _, n := range natsNames {
		if !reached[n] {
			t.Errorf("%s: --nats-url %q leaves out %s: the node could not fail over to it", where, urls, n)
		}
	}
}

func checkPGURL(t *testing.T, where, raw string, env map[string]string) {
	t.Helper()
	if raw == "" {
		t.Errorf("%s: no --pg-url: the stack's Postgres would get no projection", where)
		return
	}
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		t.Errorf("%s: --pg-url %q is not a postgres:// URL", where, raw)
		return
	}
	user := env["POSTGRES_USER"]
	if user == "" {
		user = "postgres"
	}
	db := env["POSTGRES_DB"]
	if db == "" {
		db = user
	}
	password, _ := u.User.Password()
	switch {
	case u.Hostname() != "postgres":
		t.Errorf("%s: --pg-url %q: host %q is not the postgres service", where, raw, u.Hostname())
	case u.Port() != "" && u.Port() != "5432":
		t.Errorf("%s: --pg-url %q: postgres listens on 5432", where, raw)
	case u.User.Username() != user || password != env["POSTGRES_PASSWORD"]:
		t.Errorf("%s: --pg-url %q: the postgres service's user is %q with POSTGRES_PASSWORD %q", where, raw, user, env["POSTGRES_PASSWORD"])
	case strings.TrimPrefix(u.Path, "/") != db:
		t.Errorf("%s: --pg-url %q: the postgres service's database is %q", where, raw, db)
	}
}

// checkBuild checks that a saga-node service runs an image of the
// repository's Dockerfile: its own build, or the image another saga-node
// service builds.
func checkBuild(t *testing.T, c *composeFile, name string, nodeNames []string) {
	t.Helper()
	s := c.Services[name]
	where := "docker-compose.yml: service " + name
	if s.Build == nil {
		for _, other := range nodeNames {
			if o := c.Services[other]; o.Build != nil && s.Image != "" && o.Image == s.Image {
				return
			}
		}
		t.Errorf("%s: neither builds the Dockerfile nor runs the image another saga-node service builds (image %q)", where, s.Image)
		return
	}
	ctxDir := filepath.Join(repoRoot, s.Build.Context)
	dockerfile := s.Build.Dockerfile
	if dockerfile == "" {
		dockerfile = "Dockerfile"
	}
	got, err1 := filepath.Abs(filepath.Join(ctxDir, dockerfile))
	want, err2 := filepath.Abs(filepath.Join(repoRoot, "Dockerfile"))
	root, err3 := filepath.Abs(repoRoot)
	abs, err4 := filepath.Abs(ctxDir)
	if err := cmpErr(err1, err2, err3, err4); err != nil {
		t.Fatal(err)
	}
	if abs != root {
		t.Errorf("%s: build context %q is not the repository root, which the Dockerfile copies", where, s.Build.Context)
	}
	if got != want {
		t.Errorf("%s: builds %s, not the repository's Dockerfile", where, got)
	}
}

func cmpErr(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// natsConfig reads, as nats-server does, the configuration file that
// service name runs with, and has nats-server validate it.
func natsConfig(t *testing.T, c *composeFile, name string) *server.Options {
	t.Helper()
	s := c.Services[name]
	where := "docker-compose.yml: service " + name
	confPath := "/etc/nats/nats-server.conf" // the alpine image's default command
	if v, ok := flagValue(s.Command, "--config"); ok {
		confPath = v
	} else if v, ok := flagValue(s.Command, "-c"); ok {
		confPath = v
	} else if len(s.Command) > 0 {
		t.Errorf("%s: command %q names no configuration file (--config)", where, s.Command)
		return nil
	}
	local := s.boundFile(confPath)
	if local == "" {
		t.Errorf("%s: no file of the repository is mounted at its configuration %s (mounts: %v)", where, confPath, s.Volumes)
		return nil
	}
	opts, err := server.ProcessConfigFile(filepath.Join(repoRoot, local))
	if err != nil {
		t.Errorf("%s: nats-server rejects %s: %v", where, local, err)
		return nil
	}
	// NewServer validates the options as a start would, without listening.
	srv, err := server.NewServer(opts)
	if err != nil {
		t.Errorf("%s: nats-server rejects %s: %v", where, local, err)
		return nil
	}
	srv.Shutdown()
	return opts
}

func routesTo(routes []*url.URL, host string, port int) bool {
	for _, r := range routes {
		if r.Hostname() == host && r.Port() == strconv.Itoa(port) {
			return true
		}
	}
	return false
}

// flagValue finds --name=v or --name v in args.
func flagValue(args []string, name string) (string, bool) {
	for i, a := range args {
		if v, ok := strings.CutPrefix(a, name+"="); ok {
			return v, true
		}
		if a == name && i+1 < len(args) {
			return args[i+1], true
		}
	}
	return "", false
}

// splitImage splits "repo:tag" (a registry host with a port stays in repo).
func splitImage(image string) (repo, tag string) {
	if i := strings.LastIndex(image, ":"); i > strings.LastIndex(image, "/") {
		return image[:i], image[i+1:]
	}
	return image, "latest"
}

func readRepoFile(t *testing.T, rel string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, rel))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func firstSubmatch(t *testing.T, b []byte, re, what string) string {
	t.Helper()
	m := regexp.MustCompile(re).FindSubmatch(b)
	if m == nil {
		t.Fatalf("%s: not found", what)
	}
	return string(m[1])
}

// The compose file, in the parts checked. Compose accepts several forms of
// most keys; the types below read each into one.

type composeFile struct {
	Services map[string]*composeService `yaml:"services"`
	Volumes  map[string]any             `yaml:"volumes"`
}

type composeService struct {
	Image           string              `yaml:"image"`
	Build           *composeBuild       `yaml:"build"`
	Entrypoint      composeWords        `yaml:"entrypoint"`
	Command         composeWords        `yaml:"command"`
	Environment     composeEnv          `yaml:"environment"`
	Volumes         []composeMount      `yaml:"volumes"`
	Ports           []composePort       `yaml:"ports"`
	Expose          []composeScalar     `yaml:"expose"`
	DependsOn       composeDependsOn    `yaml:"depends_on"`
	Healthcheck     *composeHealthcheck `yaml:"healthcheck"`
	StopGracePeriod string              `yaml:"stop_grace_period"`
}

func loadCompose(t *testing.T) *composeFile {
	t.Helper()
	var c composeFile
	if err := yaml.Unmarshal(readRepoFile(t, "docker-compose.yml"), &c); err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	return &c
}

// namesWithPrefix returns the names of the services starting with prefix, sorted.
func (c *composeFile) namesWithPrefix(prefix string) []string {
	var names []string
	for name := range c.Services {
		if strings.HasPrefix(name, prefix) {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	return names
}

// onNamedVolume reports whether dir is on a declared named volume, which
// outlives the container.
func (s *composeService) onNamedVolume(c *composeFile, dir string) bool {
	if dir == "" {
		return false
	}
	for _, m := range s.Volumes {
		if _, declared := c.Volumes[m.Source]; !declared || m.Type != "volume" {
			continue
		}
		if dir == m.Target || strings.HasPrefix(dir, strings.TrimSuffix(m.Target, "/")+"/") {
			return true
		}
	}
	return false
}

// boundFile returns the repository path bind-mounted at target, or "".
func (s *composeService) boundFile(target string) string {
	for _, m := range s.Volumes {
		if m.Type == "bind" && m.Target == target {
			return m.Source
		}
	}
	return ""
}

// containerPorts lists the container ports a service publishes or exposes.
func (s *composeService) containerPorts() []string {
	var ports []string
	for _, p := range s.Ports {
		ports = append(ports, p.Target)
	}
	for _, e := range s.Expose {
		ports = append(ports, strings.TrimSuffix(string(e), "/tcp"))
	}
	return ports
}

// requireHealthcheck checks that the service has an enabled health check
// whose command mentions want.
func (s *composeService) requireHealthcheck(t *testing.T, where, want string) {
	t.Helper()
	h := s.Healthcheck
	switch {
	case h == nil:
		t.Errorf("%s: no healthcheck (want one checking %s)", where, want)
	case h.Disable || len(h.Test) == 0 || h.Test[0] == "NONE":
		t.Errorf("%s: its healthcheck is disabled", where)
	case !strings.Contains(strings.Join(h.Test[1:], " "), want):
		t.Errorf("%s: healthcheck %q does not check %s", where, h.Test, want)
	}
}

type composeBuild struct {
	Context    string `yaml:"context"`
	Dockerfile string `yaml:"dockerfile"`
}

func (b *composeBuild) UnmarshalYAML(decode func(any) error) error {
	var s string
	if err := decode(&s); err == nil {
		*b = composeBuild{Context: s}
		return nil
	}
	type plain composeBuild
	return decode((*plain)(b))
}

// composeWords is a command: a list, or a string of space-separated words.
type composeWords []string

func (w *composeWords) UnmarshalYAML(decode func(any) error) error {
	var v any
	if err := decode(&v); err != nil {
		return err
	}
	switch v := v.(type) {
	case nil:
		*w = nil
	case string:
		if strings.ContainsAny(v, `"'\$`) {
			return fmt.Errorf("command %q: write it as a list; the check does not evaluate shell quoting", v)
		}
		*w = strings.Fields(v)
	case []any:
		out := make(composeWords, len(v))
		for i, x := range v {
			switch x.(type) {
			case nil, []any, map[string]any:
				return fmt.Errorf("command element %d is not a scalar", i)
			}
			out[i] = fmt.Sprint(x)
		}
		*w = out
	default:
		return fmt.Errorf("want a command (list or string), got %T", v)
	}
	return nil
}

type composeScalar string

func (s *composeScalar) UnmarshalYAML(decode func(any) error) error {
	var v any
	if err := decode(&v); err != nil {
		return err
	}
	switch v.(type) {
	case []any, map[string]any:
		return fmt.Errorf("want a scalar, got %T", v)
	}
	*s = composeScalar(fmt.Sprint(v))
	return nil
}

// composeEnv is environment: a mapping, or a list of KEY=VALUE.
type composeEnv map[string]string

func (e *composeEnv) UnmarshalYAML(decode func(any) error) error {
	var list []string
	if err := decode(&list); err == nil {
		*e = composeEnv{}
		for _, kv := range list {
			k, v, _ := strings.Cut(kv, "=")
			(*e)[k] = v
		}
		return nil
	}
	var m map[string]composeScalar
	if err := decode(&m); err != nil {
		return err
	}
	*e = composeEnv{}
	for k, v := range m {
		(*e)[k] = string(v)
	}
	return nil
}

// composeMount is one entry of volumes, short ("src:dst:ro") or long.
type composeMount struct {
	Type   string `yaml:"type"`
	Source string `yaml:"source"`
	Target string `yaml:"target"`
}

func (m composeMount) String() string { return m.Source + ":" + m.Target }

func (m *composeMount) UnmarshalYAML(decode func(any) error) error {
	var s string
	if err := decode(&s); err != nil {
		type plain composeMount
		return decode((*plain)(m))
	}
	parts := strings.Split(s, ":")
	if len(parts) == 1 {
		*m = composeMount{Type: "volume", Target: parts[0]} // anonymous
		return nil
	}
	*m = composeMount{Type: "volume", Source: parts[0], Target: parts[1]}
	if strings.HasPrefix(m.Source, ".") || strings.HasPrefix(m.Source, "/") || strings.HasPrefix(m.Source, "~") {
		m.Type = "bind"
	}
	return nil
}

// composePort is one entry of ports: "[ip:]host:container[/proto]",
// "container", or the long form; only the container port is kept.
type composePort struct {
	Target string
}

func (p *composePort) UnmarshalYAML(decode func(any) error) error {
	var long struct {
		Target composeScalar `yaml:"target"`
	}
	if err := decode(&long); err == nil && long.Target != "" {
		p.Target = string(long.Target)
		return nil
	}
	var s composeScalar
	if err := decode(&s); err != nil {
		return err
	}
	short, _, _ := strings.Cut(string(s), "/")
	p.Target = short[strings.LastIndex(short, ":")+1:]
	return nil
}

// composeDependsOn maps each dependency to its condition.
type composeDependsOn map[string]string

func (d *composeDependsOn) UnmarshalYAML(decode func(any) error) error {
	*d = composeDependsOn{}
	var list []string
	if err := decode(&list); err == nil {
		for _, name := range list {
			(*d)[name] = "service_started"
		}
		return nil
	}
	var m map[string]struct {
		Condition string `yaml:"condition"`
	}
	if err := decode(&m); err != nil {
		return err
	}
	for name, v := range m {
		if v.Condition == "" {
			v.Condition = "service_started"
		}
		(*d)[name] = v.Condition
	}
	return nil
}

type composeHealthcheck struct {
	Test    composeHealthTest `yaml:"test"`
	Disable bool              `yaml:"disable"`
}

// program returns the executable the health check runs.
func (h *composeHealthcheck) program() string {
	switch {
	case len(h.Test) < 2:
		return ""
	case h.Test[0] == "CMD-SHELL":
		first, _, _ := strings.Cut(strings.TrimSpace(h.Test[1]), " ")
		return first
	}
	return h.Test[1]
}

// composeHealthTest is a health check's test in list form: a string is
// ["CMD-SHELL", string].
type composeHealthTest []string

func (h *composeHealthTest) UnmarshalYAML(decode func(any) error) error {
	var s string
	if err := decode(&s); err == nil {
		*h = composeHealthTest{"CMD-SHELL", s}
		return nil
	}
	var w composeWords
	if err := decode(&w); err != nil {
		return err
	}
	*h = composeHealthTest(w)
	return nil
}

// The Dockerfile, in instructions grouped by stage.

type dockerInstr struct {
	cmd, args string
}

type dockerStage struct {
	base, name string
	instrs     []dockerInstr
}

func loadDockerfile(t *testing.T) []*dockerStage {
	t.Helper()
	stages, err := parseDockerfile(string(readRepoFile(t, "Dockerfile")))
	if err != nil {
		t.Fatalf("Dockerfile: %v", err)
	}
	return stages
}

// parseDockerfile reads instructions, joining continued lines and
// dropping comments; heredocs are not supported.
func parseDockerfile(text string) ([]*dockerStage, error) {
	var stages []*dockerStage
	lines := strings.Split(text, "\n")
	for i := 0; i < len(lines); i++ {
		line := strings.TrimSpace(lines[i])
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		for strings.HasSuffix(line, `\`) && i+1 < len(lines) {
			line = strings.TrimSuffix(line, `\`)
			i++
			if next := strings.TrimSpace(lines[i]); !strings.HasPrefix(next, "#") {
				line += " " + next
			}
		}
		if strings.Contains(line, "<<") {
			return nil, fmt.Errorf("line %d: heredocs are not supported by this check", i+1)
		}
		cmd, args, _ := strings.Cut(line, " ")
		cmd, args = strings.ToUpper(cmd), strings.TrimSpace(args)
		if cmd == "FROM" {
			var f []string
			for _, w := range strings.Fields(args) {
				if !strings.HasPrefix(w, "--") {
					f = append(f, w)
				}
			}
			if len(f) == 0 {
				return nil, fmt.Errorf("line %d: FROM without an image", i+1)
			}
			st := &dockerStage{base: f[0]}
			if len(f) == 3 && strings.EqualFold(f[1], "AS") {
				st.name = f[2]
			}
			stages = append(stages, st)
			continue
		}
		if len(stages) == 0 {
			if cmd == "ARG" {
				continue
			}
			return nil, fmt.Errorf("line %d: %s before the first FROM", i+1, cmd)
		}
		st := stages[len(stages)-1]
		st.instrs = append(st.instrs, dockerInstr{cmd: cmd, args: args})
	}
	return stages, nil
}

// copiedBinary finds the saga-node binary the stage copies from an earlier
// stage: that stage, the source path there and the destination here.
func (s *dockerStage) copiedBinary(stages []*dockerStage) (from *dockerStage, src, dst string) {
	for _, in := range s.instrs {
		if in.cmd != "COPY" || !strings.Contains(in.args, "saga-node") {
			continue
		}
		var ref string
		var paths []string
		for _, w := range strings.Fields(in.args) {
			if v, ok := strings.CutPrefix(w, "--from="); ok {
				ref = v
			} else if !strings.HasPrefix(w, "--") {
				paths = append(paths, w)
			}
		}
		if ref == "" || len(paths) != 2 {
			continue
		}
		for i, st := range stages {
			if st.name == ref || strconv.Itoa(i) == ref {
				return st, paths[0], paths[1]
			}
		}
	}
	return nil, "", ""
}

// last returns the arguments of the stage's last instruction cmd.
func (s *dockerStage) last(cmd string) string {
	out := ""
	for _, in := range s.instrs {
		if in.cmd == cmd {
			out = in.args
		}
	}
	return out
}

// all joins the arguments of all the stage's instructions cmd.
func (s *dockerStage) all(cmd string) string {
	var out []string
	for _, in := range s.instrs {
		if in.cmd == cmd {
			out = append(out, in.args)
		}
	}
	return strings.Join(out, " ")
}

// execForm decodes the JSON (exec) form of ENTRYPOINT or CMD.
func execForm(args string) ([]string, bool) {
	var v []string
	if err := json.Unmarshal([]byte(args), &v); err != nil {
		return nil, false
	}
	return v, true
}
