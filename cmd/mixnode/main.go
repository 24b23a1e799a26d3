// Command mixnode runs the other side of mixvpn: the directory authority,
// entry gateways, mixes and exit gateways, and the local network that starts
// all of them on one machine.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := rootCommand().ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "mixnode:", err)
		os.Exit(1)
	}
}

func rootCommand() *cobra.Command {
	var level string
	var jsonLogs bool
	root := &cobra.Command{
		Use:           "mixnode",
		Short:         "mixvpn network node: directory, entry, mix, exit, and the local network",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().StringVar(&level, "log-level", "info", "log level: debug, info, warn, error")
	root.PersistentFlags().BoolVar(&jsonLogs, "log-json", false, "log as JSON")
	logger := func() *slog.Logger {
		var lv slog.Level
		lv.UnmarshalText([]byte(level))
		opts := &slog.HandlerOptions{Level: lv}
		if jsonLogs {
			return slog.New(slog.NewJSONHandler(os.Stderr, opts))
		}
		return slog.New(slog.NewTextHandler(os.Stderr, opts))
	}
	root.AddCommand(internetCommand(logger), runCommand(logger), devnetCommand(logger), probeCommand(), fetchCommand())
	return root
}
