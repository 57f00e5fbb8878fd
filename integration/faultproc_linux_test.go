package integration

import "syscall"

// nodeSysProcAttr makes the kernel kill a node when the test binary dies,
// so that a run stopped by -timeout or a signal, which runs no cleanup,
// leaves no node behind.
func nodeSysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
