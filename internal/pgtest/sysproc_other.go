//go:build !linux

package pgtest

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

// serverAccount: PostgreSQL refuses to run as root, and only on Linux does
// pgtest switch to another user.
func serverAccount() (*account, error) {
	if os.Geteuid() == 0 {
		return nil, errors.New("PostgreSQL refuses to run as root: run the tests as an unprivileged user")
	}
	return nil, nil
}

func makeDir(*account) (string, error) {
	// Absolute: the server reports its data directory so, and the start
	// compares.
	parent, err := filepath.Abs(os.TempDir())
	if err != nil {
		return "", fmt.Errorf("temporary directory: %w", err)
	}
	dir, err := os.MkdirTemp(parent, "saga-pgtest-")
	if err != nil {
		return "", fmt.Errorf("make the cluster's directory: %w", err)
	}
	return dir, nil
}

func sysProcAttr(*account) *syscall.SysProcAttr { return nil }
