package integration

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The node processes of the fault tests: integration/faultnode, built once
// per test binary without the race detector, run as real OS processes and
// killed with SIGKILL, so that nothing of a killed node survives but what
// it wrote to NATS, to Postgres and to its output.

// faultnode's environment (a main package cannot be imported): the file
// each activity execution appends a line to, and the longest an activity
// execution takes.
const (
	envExecutions    = "SAGA_FAULT_EXECUTIONS"
	envActivityDelay = "SAGA_FAULT_ACTIVITY_DELAY"
)

// buildFaultNode builds integration/faultnode into dir and returns the
// binary's path.
func buildFaultNode(t *testing.T, dir string) string {
	t.Helper()
	bin := filepath.Join(dir, "faultnode")
	began := time.Now()
	cmd := exec.Command("go", "build", "-o", bin, "./faultnode")
	// The nodes run at full speed: the race detector is for the test
	// process, whatever flags built it.
	cmd.Env = append(os.Environ(), "GOFLAGS=")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build the node binary (go build -o %s ./faultnode): %v\n%s", bin, err, out)
	}
	t.Logf("built %s in %s", bin, time.Since(began).Round(time.Millisecond))
	return bin
}

// nodeProc is one node of the fleet: a process that the harness starts,
// kills and starts again under the same name, with the same arguments
// and one log file across its lives.
type nodeProc struct {
	name string
	bin  string
	args []string
	env  []string
	dir  string
	log  string
	// cur is the process of this life, nil before the first start.
	cur *procRun
	// starts counts the processes started, restarts the ones after a kill.
	starts, restarts int
	// logOffset is where the current process's output begins in log.
	logOffset int64
}

// procRun is one life of a node: its process, and done, closed once it
// exited, with err what its Wait returned.
type procRun struct {
	cmd    *exec.Cmd
	done   chan struct{}
	err    error
	killed bool
}

// start runs a new process of the node. Its output goes straight to the
// log file (no goroutine copies it), and a goroutine waits for its exit,
// owned by whoever stops the process: kill and stop wait for done.
func (p *nodeProc) start() error {
	f, err := os.OpenFile(p.log, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("node %s: open log: %w", p.name, err)
	}
	defer f.Close() // the process has its own descriptor
	p.starts++
	if fi, err := f.Stat(); err == nil {
		p.logOffset = fi.Size()
	}
	fmt.Fprintf(f, "==== faulttest: %s process %d started at %s\n", p.name, p.starts, time.Now().Format(time.RFC3339Nano))
	cmd := exec.Command(p.bin, p.args...)
	cmd.Dir = p.dir
	cmd.Env = append(os.Environ(), p.env...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = nodeSysProcAttr()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("node %s: start: %w", p.name, err)
	}
	r := &procRun{cmd: cmd, done: make(chan struct{})}
	go func() {
		r.err = cmd.Wait()
		close(r.done)
	}()
	p.cur = r
	return nil
}

// started reports whether the current process logged that its node
// started.
func (p *nodeProc) started() bool {
	f, err := os.Open(p.log)
	if err != nil {
		return false
	}
	defer f.Close()
	b, err := io.ReadAll(io.NewSectionReader(f, p.logOffset, 1<<40))
	return err == nil && bytes.Contains(b, []byte(`msg="node started"`))
}

// exited reports whether the current process ended without the harness
// killing or stopping it, and how.
func (p *nodeProc) exited() (bool, error) {
	if p.cur == nil {
		return false, nil
	}
	select {
	case <-p.cur.done:
		return !p.cur.killed, p.cur.err
	default:
		return false, nil
	}
}

// signalKill sends SIGKILL without waiting, so that several nodes die
// together; kill waits.
func (p *nodeProc) signalKill() {
	if p.cur == nil {
		return
	}
	p.cur.killed = true
	_ = p.cur.cmd.Process.Kill()
}

// kill sends SIGKILL and waits for the process to be gone.
func (p *nodeProc) kill() {
	if p.cur == nil {
		return
	}
	p.signalKill()
	<-p.cur.done
}

// restart starts the node again after kill.
func (p *nodeProc) restart() error {
	p.restarts++
	return p.start()
}

// stop ends the process as an operator would, with SIGTERM, and waits
// for it to drain; past grace it kills it. It says how it ended.
func (p *nodeProc) stop(grace time.Duration) error {
	if p.cur == nil {
		return nil
	}
	select {
	case <-p.cur.done:
		return nil // killed, or ended on its own, which exited reports
	default:
	}
	p.cur.killed = true
	_ = p.cur.cmd.Process.Signal(syscall.SIGTERM)
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-p.cur.done:
		if p.cur.err != nil {
			return fmt.Errorf("node %s ended with %w after SIGTERM", p.name, p.cur.err)
		}
		return nil
	case <-t.C:
		_ = p.cur.cmd.Process.Kill()
		<-p.cur.done
		return fmt.Errorf("node %s still ran %s after SIGTERM: killed", p.name, grace)
	}
}

// tailFile returns the last n bytes of a file, from a line's start.
func tailFile(path string, n int64) string {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Sprintf("(%v)", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Sprintf("(%v)", err)
	}
	off := max(fi.Size()-n, 0)
	b, err := io.ReadAll(io.NewSectionReader(f, off, fi.Size()-off))
	if err != nil && !errors.Is(err, io.EOF) {
		return fmt.Sprintf("(%v)", err)
	}
	if off > 0 {
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			b = b[i+1:]
		}
		return "…\n" + string(b)
	}
	return string(b)
}

// grepFile returns the lines of a file holding any of words, at most max.
func grepFile(path string, limit int, words ...string) []string {
	b, err := os.ReadFile(path)
	if err != nil {
		return []string{fmt.Sprintf("(%v)", err)}
	}
	var out []string
	for line := range strings.SplitSeq(string(b), "\n") {
		for _, w := range words {
			if strings.Contains(line, w) {
				out = append(out, line)
				break
			}
		}
		if len(out) == limit {
			break
		}
	}
	return out
}
