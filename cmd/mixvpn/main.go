// Command mixvpn is the command-line client of mixvpnd: it connects and
// disconnects the VPN, switches between Fast and Anonymous mode, and shows
// and changes the daemon's status, gateways and settings.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr, os.Getenv)
	stop()
	os.Exit(code)
}

// run is the whole command, with its outside world passed in so that tests
// can drive it; it returns the exit status.
func run(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	root := rootCommand(cliConfig{Stdout: stdout, Stderr: stderr, Getenv: getenv})
	root.SetArgs(args)
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintln(stderr, "mixvpn:", err)
		return 1
	}
	return 0
}
