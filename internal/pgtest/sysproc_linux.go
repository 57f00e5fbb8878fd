package pgtest

import (
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
)

// serverAccount returns who the server runs as: this process's user,
// except as root, which PostgreSQL refuses: then postgres (Debian's
// packages make it), else nobody, else a system user saga-pg made now.
func serverAccount() (*account, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	for _, name := range []string{"postgres", "nobody", "saga-pg"} {
		if a, err := lookupAccount(name); err == nil {
			return a, nil
		}
	}
	out, err := exec.Command("useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "saga-pg").CombinedOutput()
	// Another test binary may have made it meanwhile.
	if a, lerr := lookupAccount("saga-pg"); lerr == nil {
		return a, nil
	}
	return nil, fmt.Errorf("PostgreSQL refuses to run as root and there is no postgres or nobody user; useradd saga-pg: %w: %s", err, out)
}

func lookupAccount(name string) (*account, error) {
	u, err := user.Lookup(name)
	if err != nil {
		return nil, err
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("user %s: uid %q: %w", name, u.Uid, err)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("user %s: gid %q: %w", name, u.Gid, err)
	}
	if uid == 0 {
		return nil, fmt.Errorf("user %s is root", name)
	}
	return &account{name: name, uid: uint32(uid), gid: uint32(gid)}, nil
}

// makeDir makes the cluster's directory, owned by the server's user, in
// the temporary directory, or in /tmp when that user could not reach the
// temporary directory (a TMPDIR under /root, say).
func makeDir(acct *account) (string, error) {
	parent := os.TempDir()
	if acct != nil {
		if err := reachable(parent, acct); err != nil {
			if err2 := reachable("/tmp", acct); err2 != nil {
				return "", fmt.Errorf("no temporary directory that user %s can reach: %w; %w", acct.name, err, err2)
			}
			parent = "/tmp"
		}
	}
	// Absolute: the server reports its data directory so, and the start
	// compares.
	parent, err := filepath.Abs(parent)
	if err != nil {
		return "", fmt.Errorf("temporary directory: %w", err)
	}
	dir, err := os.MkdirTemp(parent, "saga-pgtest-")
	if err != nil {
		return "", fmt.Errorf("make the cluster's directory: %w", err)
	}
	if acct != nil {
		if err := os.Chown(dir, int(acct.uid), int(acct.gid)); err != nil {
			_ = os.RemoveAll(dir)
			return "", fmt.Errorf("hand %s to user %s: %w", dir, acct.name, err)
		}
	}
	return dir, nil
}

// reachable reports whether acct may search dir and each of its parents.
func reachable(dir string, acct *account) error {
	real, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return err
	}
	real, err = filepath.Abs(real)
	if err != nil {
		return err
	}
	for d := real; ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil {
			return err
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			return fmt.Errorf("%s: no owner to check", d)
		}
		perm := fi.Mode().Perm()
		var search bool
		switch {
		case st.Uid == acct.uid:
			search = perm&0o100 != 0
		case st.Gid == acct.gid:
			search = perm&0o010 != 0
		default:
			search = perm&0o001 != 0
		}
		if !search {
			return fmt.Errorf("user %s may not enter %s (%v)", acct.name, d, fi.Mode())
		}
		if d == filepath.Dir(d) {
			return nil
		}
	}
}

// sysProcAttr runs a PostgreSQL binary as acct, and makes the kernel send
// it SIGQUIT (PostgreSQL's immediate shutdown) when the test binary dies,
// so that a test binary killed by -timeout or a signal, which runs no
// cleanup, leaves no server running. Go sets the signal after switching
// user, which would otherwise clear it.
func sysProcAttr(acct *account) *syscall.SysProcAttr {
	attr := &syscall.SysProcAttr{Pdeathsig: syscall.SIGQUIT}
	if acct != nil {
		// No supplementary groups: root's must not follow the server.
		attr.Credential = &syscall.Credential{Uid: acct.uid, Gid: acct.gid, Groups: []uint32{}}
	}
	return attr
}
