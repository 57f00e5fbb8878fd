package pgtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// errNoBinaries: the machine has no PostgreSQL server to start.
var errNoBinaries = errors.New("PostgreSQL's server binaries (initdb, postgres) are neither on PATH nor under " + debianRoot + "/<version>/bin")

// debianRoot is where Debian and Ubuntu install each major version's
// binaries, off PATH; a variable so that a test can point it elsewhere.
var debianRoot = "/usr/lib/postgresql"

// superuser is the role initdb makes, which the tests connect as.
const superuser = "postgres"

// account is the unprivileged user a server started as root runs as.
type account struct {
	name     string
	uid, gid uint32
}

// cluster is a PostgreSQL server that pgtest started: its data directory,
// its port, and its postmaster while it runs.
type cluster struct {
	bin  string   // the directory holding initdb and postgres
	dir  string   // data/, sock/ and postgres.log
	acct *account // who the server runs as; nil: as this process's user
	log  *os.File // the server's output, across restarts

	mu   sync.Mutex
	port int
	cmd  *exec.Cmd     // the postmaster; nil while stopped
	done chan struct{} // closed once cmd has exited
}

// newCluster makes a cluster in a new temporary directory and starts it.
// On failure it leaves nothing behind.
func newCluster(ctx context.Context) (c *cluster, err error) {
	bin, err := findBinaries()
	if err != nil {
		return nil, err
	}
	acct, err := serverAccount()
	if err != nil {
		return nil, err
	}
	dir, err := makeDir(acct)
	if err != nil {
		return nil, err
	}
	c = &cluster{bin: bin, dir: dir, acct: acct}
	defer func() {
		if err != nil {
			if rerr := c.remove(); rerr != nil {
				err = fmt.Errorf("%w (and cleaning up: %v)", err, rerr)
			}
		}
	}()
	if err := os.Mkdir(c.sockDir(), 0o700); err != nil {
		return c, fmt.Errorf("make socket directory: %w", err)
	}
	if acct != nil {
		if err := os.Chown(c.sockDir(), int(acct.uid), int(acct.gid)); err != nil {
			return c, fmt.Errorf("hand the socket directory to %s: %w", acct.name, err)
		}
	}
	// The log is opened here and handed to the server as its stdout and
	// stderr, so it needs no permission of the server's user.
	c.log, err = os.OpenFile(filepath.Join(dir, "postgres.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return c, fmt.Errorf("open the server's log: %w", err)
	}
	if err := c.initdb(ctx); err != nil {
		return c, err
	}
	if err := c.start(ctx); err != nil {
		return c, err
	}
	return c, nil
}

func (c *cluster) dataDir() string { return filepath.Join(c.dir, "data") }
func (c *cluster) sockDir() string { return filepath.Join(c.dir, "sock") }

// url is the connection URL of database db.
func (c *cluster) url(db string) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return fmt.Sprintf("postgres://%s@127.0.0.1:%d/%s?sslmode=disable", superuser, c.port, db)
}

// adminURL is where databases are created and dropped from.
func (c *cluster) adminURL() string { return c.url("postgres") }

// command runs a PostgreSQL binary as the server's user, from the cluster's
// directory: initdb fails when it cannot read its working directory.
func (c *cluster) command(name string, args ...string) *exec.Cmd {
	cmd := exec.Command(filepath.Join(c.bin, name), args...)
	cmd.Dir = c.dir
	// Messages in English, whatever the machine's locale: start-up
	// failures are recognised by them.
	cmd.Env = append(os.Environ(), "LC_ALL=C", "LANG=C")
	cmd.SysProcAttr = sysProcAttr(c.acct)
	return cmd
}

func (c *cluster) initdb(ctx context.Context) error {
	// C locale: the same sorting on every machine, and no dependence on
	// the locales installed. --no-sync: the cluster is thrown away.
	cmd := c.command("initdb", "-D", c.dataDir(), "-U", superuser, "--auth=trust",
		"--encoding=UTF8", "--locale=C", "--no-sync")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := runCtx(ctx, cmd); err != nil {
		return fmt.Errorf("initdb: %w: %s", err, strings.TrimSpace(out.String()))
	}
	return nil
}

// runCtx runs cmd, killing it if ctx ends first.
func runCtx(ctx context.Context, cmd *exec.Cmd) error {
	if err := cmd.Start(); err != nil {
		return err
	}
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	select {
	case err := <-waited:
		return err
	case <-ctx.Done():
		_ = cmd.Process.Kill()
		<-waited
		return ctx.Err()
	}
}

// start runs the postmaster and returns once it accepts connections. The
// first start picks a free port, and picks again if another process took
// it meanwhile; a restart keeps the port, which clients' URLs name.
func (c *cluster) start(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cmd != nil {
		return errors.New("already running")
	}
	fixed := c.port != 0
	for attempt := 1; ; attempt++ {
		if !fixed {
			p, err := pickPort()
			if err != nil {
				return err
			}
			c.port = p
		}
		err := c.startOnce(ctx)
		if err == nil {
			return nil
		}
		if fixed || !errors.Is(err, errPortTaken) || attempt == 5 {
			return err
		}
	}
}

var errPortTaken = errors.New("port taken")

func (c *cluster) startOnce(ctx context.Context) error {
	logStart, err := c.log.Seek(0, io.SeekEnd)
	if err != nil {
		return fmt.Errorf("the server's log: %w", err)
	}
	// fsync and full-page writes protect against the machine crashing, not
	// the server: without them a stopped or killed server loses nothing
	// committed. synchronous_commit stays on: with it off, a commit could
	// still be only in the server's memory when a test stops it.
	cmd := c.command("postgres", "-D", c.dataDir(),
		"-p", strconv.Itoa(c.port),
		"-k", c.sockDir(),
		"-c", "listen_addresses=127.0.0.1",
		"-c", "fsync=off",
		"-c", "full_page_writes=off",
		"-c", "max_connections=200",
	)
	cmd.Stdout, cmd.Stderr = c.log, c.log
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("run postgres: %w", err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait() // why it exited is in the log
		close(done)
	}()
	c.cmd, c.done = cmd, done
	if err := c.waitReady(ctx, done); err != nil {
		_ = c.stopLocked() // the start's error says more
		tail := c.logTail(logStart, 2048)
		if !errors.Is(err, errPortTaken) && (strings.Contains(tail, "could not bind") || strings.Contains(tail, "Address already in use")) {
			err = fmt.Errorf("%w: %w", errPortTaken, err)
		}
		return fmt.Errorf("postgres on port %d: %w; its log:\n%s", c.port, err, tail)
	}
	return nil
}

// waitReady polls until the server accepts a connection, it exits, or ctx
// ends.
func (c *cluster) waitReady(ctx context.Context, exited <-chan struct{}) error {
	url := fmt.Sprintf("postgres://%s@127.0.0.1:%d/postgres?sslmode=disable", superuser, c.port)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		attemptCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
		conn, err := pgx.Connect(attemptCtx, url)
		if err == nil {
			// Another test binary's server may have taken the port between
			// freePort and this one's bind: check it is this one.
			var dataDir string
			err = conn.QueryRow(attemptCtx, "SELECT current_setting('data_directory')").Scan(&dataDir)
			_ = conn.Close(context.Background())
			cancel()
			if err != nil {
				return fmt.Errorf("ask the server its data directory: %w", err)
			}
			if dataDir != c.dataDir() {
				return fmt.Errorf("%w: the server there is %s's", errPortTaken, dataDir)
			}
			return nil
		}
		cancel()
		select {
		case <-exited:
			return errors.New("exited while starting")
		case <-ctx.Done():
			return fmt.Errorf("not accepting connections in time: %w", err)
		case <-tick.C:
		}
	}
}

// stop stops the server at once, if it runs: SIGQUIT is PostgreSQL's
// immediate shutdown, which drops every connection and skips the
// checkpoint, so a restart recovers from the WAL as after a crash.
func (c *cluster) stop() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stopLocked()
}

func (c *cluster) stopLocked() error {
	if c.cmd == nil {
		return nil
	}
	cmd, done := c.cmd, c.done
	c.cmd, c.done = nil, nil
	if err := cmd.Process.Signal(syscall.SIGQUIT); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("signal postgres: %w", err)
	}
	// The postmaster kills its children itself after 5 s; past that,
	// something is wrong enough to kill it.
	timer := time.NewTimer(30 * time.Second)
	defer timer.Stop()
	select {
	case <-done:
		return nil
	case <-timer.C:
		_ = cmd.Process.Kill()
		<-done
		return errors.New("postgres ignored SIGQUIT for 30 s; killed it")
	}
}

// remove stops the server and deletes its files.
func (c *cluster) remove() error {
	err := c.stop()
	if c.log != nil {
		_ = c.log.Close()
	}
	if rerr := os.RemoveAll(c.dir); rerr != nil {
		err = errors.Join(err, fmt.Errorf("remove %s: %w", c.dir, rerr))
	}
	return err
}

// logTail returns at most max bytes from the end of the server's log, from
// offset from on.
func (c *cluster) logTail(from int64, max int) string {
	b, err := os.ReadFile(filepath.Join(c.dir, "postgres.log"))
	if err != nil {
		return fmt.Sprintf("(unreadable: %v)", err)
	}
	if from > int64(len(b)) {
		from = 0
	}
	b = b[from:]
	if len(b) > max {
		b = b[len(b)-max:]
	}
	return strings.TrimSpace(string(b))
}

// pickPort is freePort, but for a test that hands out a taken port.
var pickPort = freePort

// freePort returns a loopback port that nothing listens on now.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// findBinaries returns a directory holding both initdb and postgres: the
// one initdb on PATH is in (after symlinks), else the highest version
// under debianRoot.
func findBinaries() (string, error) {
	var dirs []string
	if p, err := exec.LookPath("initdb"); err == nil {
		if real, err := filepath.EvalSymlinks(p); err == nil {
			dirs = append(dirs, filepath.Dir(real))
		}
		dirs = append(dirs, filepath.Dir(p))
	}
	versions, _ := filepath.Glob(filepath.Join(debianRoot, "*", "bin"))
	slices.SortFunc(versions, func(a, b string) int {
		return compareVersions(filepath.Base(filepath.Dir(b)), filepath.Base(filepath.Dir(a)))
	})
	dirs = append(dirs, versions...)
	for _, d := range dirs {
		if executable(filepath.Join(d, "initdb")) && executable(filepath.Join(d, "postgres")) {
			return d, nil
		}
	}
	return "", errNoBinaries
}

func executable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0
}

// compareVersions orders versions such as "9.6", "15" and "16.2" by their
// numbers.
func compareVersions(a, b string) int {
	as, bs := strings.Split(a, "."), strings.Split(b, ".")
	for i := 0; i < len(as) || i < len(bs); i++ {
		var x, y int
		if i < len(as) {
			x, _ = strconv.Atoi(as[i])
		}
		if i < len(bs) {
			y, _ = strconv.Atoi(bs[i])
		}
		if x != y {
			return x - y
		}
	}
	return strings.Compare(a, b)
}
