//go:build !linux

package integration

import "syscall"

// nodeSysProcAttr: only Linux can tie a node's life to the test binary's.
func nodeSysProcAttr() *syscall.SysProcAttr { return nil }
