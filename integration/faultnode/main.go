// Command faultnode is the saga-node that the fault-injection tests of
// package integration run as real OS processes and kill with SIGKILL. It is
// "saga-node run" serving the order and approval examples, with one
// addition: when SAGA_FAULT_EXECUTIONS names a file, every activity
// execution appends one line "<saga id> <activity type>" to it before the
// activity does its work, so that the tests count executions across
// processes that die without a chance to report anything; and when
// SAGA_FAULT_ACTIVITY_DELAY is set (a Go duration), every activity takes
// a random time up to it, as real work would, so that a kill finds
// activities half done.
package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"time"

	"github.com/jetsaga/saga"
	"github.com/jetsaga/saga/cli"
	"github.com/jetsaga/saga/examples/approval"
	"github.com/jetsaga/saga/examples/order"
)

// The environment that faultnode reads besides saga-node's.
const (
	// EnvExecutions names the file that records activity executions.
	EnvExecutions = "SAGA_FAULT_EXECUTIONS"
	// EnvActivityDelay bounds the time each activity execution takes.
	EnvActivityDelay = "SAGA_FAULT_ACTIVITY_DELAY"
)

func main() { os.Exit(run()) }

func run() int {
	orders, approvals := order.NewService(), approval.NewService()
	var delay time.Duration
	if v := os.Getenv(EnvActivityDelay); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			fmt.Fprintf(os.Stderr, "faultnode: %s=%q is not a duration\n", EnvActivityDelay, v)
			return 2
		}
		delay = d
	}
	if path := os.Getenv(EnvExecutions); path != "" {
		// O_APPEND makes each line land whole at the end of the file,
		// whichever of the processes sharing it writes; a line written
		// before a SIGKILL is kept, as the kernel holds it.
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
		if err != nil {
			fmt.Fprintf(os.Stderr, "faultnode: open %s: %v\n", path, err)
			return 1
		}
		defer f.Close()
		record := func(ctx context.Context, step, id string) error {
			// The examples pass their own id (order or request id); the
			// tests key on the saga id.
			if info, ok := saga.GetActivityInfo(ctx); ok {
				id = info.SagaID
			}
			// One write per line, so that lines of two processes never mix.
			if _, err := f.WriteString(id + " " + step + "\n"); err != nil {
				return fmt.Errorf("faultnode: record the execution of %s for %s: %w", step, id, err)
			}
			if delay <= 0 {
				return nil
			}
			work := time.NewTimer(rand.N(delay))
			defer work.Stop()
			select {
			case <-work.C:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		orders.Hook, approvals.Hook = record, record
	}
	reg := saga.NewRegistry()
	reg.MustRegister(orders.Definitions()...)
	reg.MustRegister(approvals.Definitions()...)
	return cli.Run(context.Background(), os.Args[1:], cli.Env{Stdout: os.Stdout, Stderr: os.Stderr, Registry: reg})
}
