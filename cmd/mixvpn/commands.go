package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/mixvpn/mixvpn/tunnel/control"
	pb "github.com/mixvpn/mixvpn/tunnel/control/controlpb"
)

func (c *cli) connectCommand() *cobra.Command {
	var mode, entry, exit string
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "connect [--mode fast|anonymous] [--entry ID|COUNTRY] [--exit ID|COUNTRY]",
		Short: "Connect, and wait until the tunnel is up",
		Long: "Connect, and wait until the tunnel is up.\n\n" +
			"--entry and --exit take a gateway ID from `mixvpn gateways` or a country\n" +
			"code in capitals (e.g. CH); left out, the settings decide.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			req := &pb.ConnectRequest{Entry: entry, Exit: exit}
			if mode != "" {
				m, err := control.ParseMode(mode)
				if err != nil {
					return err
				}
				req.Mode = control.ModeToProto(m)
			}
			st, err := c.waitState(cmd.Context(), timeout, func(ctx context.Context, client pb.ControlClient, _ control.Status) (func(control.Status) bool, error) {
				_, err := client.Connect(ctx, req)
				return inState(control.StateConnected), err
			})
			if err != nil {
				return err
			}
			fmt.Fprintf(c.out, "Connected in %s mode: entry %s, exit %s\n", st.Mode, st.Entry, st.Exit)
			return nil
		},
	}
	cmd.Flags().StringVar(&mode, "mode", "", "fast or anonymous (default: the settings' mode)")
	cmd.Flags().StringVar(&entry, "entry", "", "entry gateway ID or country code")
	cmd.Flags().StringVar(&exit, "exit", "", "exit gateway ID or country code")
	cmd.Flags().DurationVar(&timeout, "timeout", time.Minute, "how long to wait for the tunnel")
	return cmd
}

func (c *cli) disconnectCommand() *cobra.Command {
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "disconnect",
		Short: "Disconnect, and wait until the tunnel is down",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := c.waitState(cmd.Context(), timeout, func(ctx context.Context, client pb.ControlClient, _ control.Status) (func(control.Status) bool, error) {
				_, err := client.Disconnect(ctx, &pb.DisconnectRequest{})
				return inState(control.StateDisconnected), err
			})
			if err != nil {
				return err
			}
			fmt.Fprintln(c.out, "Disconnected")
			return nil
		},
	}
	cmd.Flags().DurationVar(&timeout, "timeout", 30*time.Second, "how long to wait for the tunnel to close")
	return cmd
}

func (c *cli) statusCommand() *cobra.Command {
	var watch, asJSON bool
	cmd := &cobra.Command{
		Use:   "status [--watch] [--json]",
		Short: "Show the connection state; --watch follows changes until interrupted",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if watch {
				return c.watchStatus(cmd.Context(), asJSON)
			}
			var st *pb.Status
			err := c.call(cmd.Context(), func(ctx context.Context, client pb.ControlClient) error {
				var err error
				st, err = client.GetStatus(ctx, &pb.GetStatusRequest{})
				return err
			})
			if err != nil {
				return err
			}
			s := control.StatusFromProto(st)
			if asJSON {
				return writeJSON(c.out, statusJSON(s))
			}
			writeStatus(c.out, s, time.Now())
			return nil
		},
	}
	cmd.Flags().BoolVar(&watch, "watch", false, "print every change until interrupted")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON (one object per line with --watch)")
	return cmd
}

// watchStatus prints the status, then every change, until ctx ends.
func (c *cli) watchStatus(ctx context.Context, asJSON bool) error {
	client, closeFn, err := c.client(ctx)
	if err != nil {
		return err
	}
	defer closeFn()
	events, err := client.WatchEvents(ctx, &pb.WatchEventsRequest{})
	if err != nil {
		return c.explain(err)
	}
	for {
		ev, err := events.Recv()
		if ctx.Err() != nil {
			return nil // interrupted: the normal way out
		}
		if err != nil {
			return c.explain(err)
		}
		e := control.EventFromProto(ev)
		if asJSON {
			j := statusJSON(e.Status)
			j.Time = e.Time.Format(time.RFC3339Nano)
			if err := writeJSON(c.out, j); err != nil {
				return err
			}
			continue
		}
		fmt.Fprintf(c.out, "%s  %s\n", e.Time.Format("15:04:05"), statusLine(e.Status))
	}
}

func (c *cli) modeCommand() *cobra.Command {
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "mode fast|anonymous",
		Short: "Switch mode; a connected tunnel reconnects in the new mode, and this waits until it is up",
		Long: "Switch mode. A connected tunnel reconnects in the new mode, and mixvpn waits\n" +
			"until it is up (or --timeout passes). Disconnected, the mode is kept for the\n" +
			"next connect. Either way it becomes the default mode in the settings.",
		Args:      cobra.ExactArgs(1),
		ValidArgs: []string{"fast", "anonymous"},
		RunE: func(cmd *cobra.Command, args []string) error {
			m, err := control.ParseMode(args[0])
			if err != nil {
				return err
			}
			switched, already := false, false
			st, err := c.waitState(cmd.Context(), timeout, func(ctx context.Context, client pb.ControlClient, before control.Status) (func(control.Status) bool, error) {
				if _, err := client.SetMode(ctx, &pb.SetModeRequest{Mode: control.ModeToProto(m)}); err != nil {
					return nil, err
				}
				already = before.State == control.StateConnected && before.Mode == m
				switch before.State {
				case control.StateConnected, control.StateConnecting, control.StateReconnecting:
					switched = true
					return func(s control.Status) bool { return s.State == control.StateConnected && s.Mode == m }, nil
				}
				return nil, nil
			})
			if err != nil {
				return err
			}
			switch {
			case already:
				fmt.Fprintf(c.out, "Already connected in %s mode: entry %s, exit %s\n", st.Mode, st.Entry, st.Exit)
				return nil
			case switched:
				fmt.Fprintf(c.out, "Switched to %s mode: entry %s, exit %s\n", st.Mode, st.Entry, st.Exit)
				return nil
			}
			fmt.Fprintf(c.out, "Mode set to %s for the next connect\n", m)
			return nil
		},
	}
	cmd.Flags().DurationVar(&timeout, "timeout", time.Minute, "how long to wait for the tunnel in the new mode")
	return cmd
}

func (c *cli) gatewaysCommand() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "gateways [--json]",
		Short: "List the entry and exit gateways",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var resp *pb.ListGatewaysResponse
			err := c.call(cmd.Context(), func(ctx context.Context, client pb.ControlClient) error {
				var err error
				resp, err = client.ListGateways(ctx, &pb.ListGatewaysRequest{})
				return err
			})
			if err != nil {
				return err
			}
			gws := make([]control.Gateway, len(resp.GetGateways()))
			for i, g := range resp.GetGateways() {
				gws[i] = control.GatewayFromProto(g)
			}
			if asJSON {
				out := make([]gatewayJSON, len(gws))
				for i, g := range gws {
					out[i] = toGatewayJSON(g)
				}
				return writeJSON(c.out, out)
			}
			tw := tabwriter.NewWriter(c.out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tROLE\tCOUNTRY\tENDPOINT\tHEALTH\tLATENCY")
			for _, g := range gws {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", g.ID, g.Role, orDash(g.Country), g.Endpoint, g.Health, latencyText(g.Latency))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func (c *cli) versionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version of mixvpn and, if it is running, of mixvpnd",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			fmt.Fprintf(c.out, "mixvpn  %s (%s)\n", clientVersion(), runtime.Version())
			var st *pb.Status
			err := c.call(cmd.Context(), func(ctx context.Context, client pb.ControlClient) error {
				var err error
				st, err = client.GetStatus(ctx, &pb.GetStatusRequest{})
				return err
			})
			if err != nil {
				// The client's version is still worth printing.
				fmt.Fprintf(c.out, "mixvpnd unknown: %v\n", err)
				return nil
			}
			fmt.Fprintf(c.out, "mixvpnd %s\n", st.GetDaemonVersion())
			return nil
		},
	}
}

func clientVersion() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok || bi.Main.Version == "" {
		return "(devel)"
	}
	return bi.Main.Version
}

// statusLine is a status on one line, for --watch.
func statusLine(s control.Status) string {
	var b strings.Builder
	b.WriteString(s.State.String())
	switch s.State {
	case control.StateConnected:
		fmt.Fprintf(&b, " (%s): entry %s, exit %s", s.Mode, s.Entry, s.Exit)
	case control.StateError:
		fmt.Fprintf(&b, ": %s", s.Error)
	case control.StateReconnecting:
		fmt.Fprintf(&b, " (%s): %s", s.Mode, s.Error)
	default:
		fmt.Fprintf(&b, " (%s)", s.Mode)
	}
	return b.String()
}

func writeStatus(w io.Writer, s control.Status, now time.Time) {
	tw := tabwriter.NewWriter(w, 0, 4, 1, ' ', 0)
	state := s.State.String()
	if !s.Since.IsZero() {
		state += fmt.Sprintf(" for %s", now.Sub(s.Since).Round(time.Second))
	}
	fmt.Fprintf(tw, "State:\t%s\n", state)
	switch {
	case s.State == control.StateError:
		fmt.Fprintf(tw, "Error:\t%s\n", s.Error)
	case s.State == control.StateReconnecting && s.Error != "":
		fmt.Fprintf(tw, "Why:\t%s\n", s.Error)
	}
	fmt.Fprintf(tw, "Mode:\t%s\n", s.Mode)
	if s.Entry != "" || s.Exit != "" {
		fmt.Fprintf(tw, "Entry:\t%s\n", s.Entry)
		fmt.Fprintf(tw, "Exit:\t%s\n", s.Exit)
	}
	tw.Flush()
}

// The JSON shapes are the CLI's own, kept stable for scripts whatever the
// protobuf messages become.

type statusView struct {
	State         string `json:"state"`
	Error         string `json:"error,omitempty"`
	Mode          string `json:"mode"`
	Entry         string `json:"entry,omitempty"`
	Exit          string `json:"exit,omitempty"`
	Since         string `json:"since,omitempty"`
	DaemonVersion string `json:"daemon_version,omitempty"`
	// Time is the event's time, with --watch.
	Time string `json:"time,omitempty"`
}

func statusJSON(s control.Status) statusView {
	v := statusView{State: s.State.String(), Error: s.Error, Mode: s.Mode.String(), Entry: s.Entry, Exit: s.Exit, DaemonVersion: s.DaemonVersion}
	if !s.Since.IsZero() {
		v.Since = s.Since.Format(time.RFC3339Nano)
	}
	return v
}

type gatewayJSON struct {
	ID        string   `json:"id"`
	Role      string   `json:"role"`
	Country   string   `json:"country,omitempty"`
	Endpoint  string   `json:"endpoint"`
	Health    string   `json:"health"`
	LatencyMs *float64 `json:"latency_ms,omitempty"`
}

func toGatewayJSON(g control.Gateway) gatewayJSON {
	v := gatewayJSON{ID: g.ID, Role: g.Role.String(), Country: g.Country, Endpoint: g.Endpoint, Health: g.Health.String()}
	if g.Latency > 0 {
		ms := float64(g.Latency.Microseconds()) / 1000
		v.LatencyMs = &ms
	}
	return v
}

func writeJSON(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encoding JSON: %w", err)
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func latencyText(d time.Duration) string {
	if d <= 0 {
		return "-"
	}
	return d.Round(100 * time.Microsecond).String()
}
