// Command saga-node runs the jetsaga engine and carries its admin CLI; see
// "saga-node help". It serves the worked examples (packages examples/order
// and examples/approval); a program with its own workflows calls cli.Run
// with its own registry instead.
package main

import (
	"context"
	"os"

	"github.com/jetsaga/saga"
	"github.com/jetsaga/saga/cli"
	"github.com/jetsaga/saga/examples/approval"
	"github.com/jetsaga/saga/examples/order"
)

func main() {
	reg := saga.NewRegistry()
	reg.MustRegister(order.NewService().Definitions()...)
	reg.MustRegister(approval.NewService().Definitions()...)
	os.Exit(cli.Run(context.Background(), os.Args[1:], cli.Env{Stdout: os.Stdout, Stderr: os.Stderr, Registry: reg}))
}
