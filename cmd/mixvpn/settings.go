package main

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/mixvpn/mixvpn/tunnel/control"
	pb "github.com/mixvpn/mixvpn/tunnel/control/controlpb"
)

func (c *cli) settingsCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "settings",
		Short: "Show or change the daemon's settings",
	}
	var asJSON bool
	get := &cobra.Command{
		Use:   "get [--json]",
		Short: "Show the settings",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var s *pb.Settings
			err := c.call(cmd.Context(), func(ctx context.Context, client pb.ControlClient) error {
				var err error
				s, err = client.GetSettings(ctx, &pb.GetSettingsRequest{})
				return err
			})
			if err != nil {
				return err
			}
			return writeSettings(c.out, s, asJSON)
		},
	}
	get.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	set := &cobra.Command{
		Use:   "set key=value...",
		Short: "Change settings; the others keep their values",
		Long: "Change settings; the others keep their values. Keys:\n\n" +
			"  kill_switch, lockdown, ipv6, allow_lan, auto_connect   true or false\n" +
			"  dns_servers      IP addresses separated by commas; empty (or exit) for the exit's\n" +
			"                   resolvers, reached through the tunnel: connecting fails through\n" +
			"                   an exit that provides none, rather than use the local network's\n" +
			"  entry, exit      a gateway ID, a country code in capitals, or any\n" +
			"  mode             fast or anonymous\n" +
			"  mix_rate         packets per second in Anonymous mode\n" +
			"  loop_rate        loop packets per second in Anonymous mode\n" +
			"  mean_delay_ms    mean delay at each mix, in milliseconds\n\n" +
			"With ipv6=false, IPv6 is blocked while connected (applications fall back to\n" +
			"IPv4 at once), not sent around the tunnel, kill switch or not.\n\n" +
			"Changes take effect at once. While connected, kill_switch, lockdown,\n" +
			"allow_lan, ipv6 and dns_servers change the firewall, routes and DNS in place;\n" +
			"mode, entry and exit, and in Anonymous mode the rates, reconnect: a new tunnel\n" +
			"(through the gateways in use for the choices not changed) replaces the old,\n" +
			"and nothing goes around the tunnel meanwhile; mixvpn status shows how it\n" +
			"goes. dns_servers emptied while connected through an exit that provides no\n" +
			"resolver is refused.\n\n" +
			"Dashes may stand for underscores: kill-switch=true.",
		Example: "  mixvpn settings set kill_switch=true dns_servers=9.9.9.9,149.112.112.112 exit=CH",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req, err := parseSettingsArgs(args)
			if err != nil {
				return err
			}
			var s *pb.Settings
			err = c.call(cmd.Context(), func(ctx context.Context, client pb.ControlClient) error {
				var err error
				s, err = client.SetSettings(ctx, req)
				return err
			})
			if err != nil {
				return err
			}
			return writeSettings(c.out, s, false)
		},
	}
	cmd.AddCommand(get, set)
	return cmd
}

// parseSettingsArgs turns key=value arguments into a masked update. It
// checks only syntax; the daemon judges the values, so its limits are
// stated in one place.
func parseSettingsArgs(args []string) (*pb.SetSettingsRequest, error) {
	req := &pb.SetSettingsRequest{Settings: &pb.Settings{}}
	known := control.SettingsFields()
	for _, arg := range args {
		key, val, ok := strings.Cut(arg, "=")
		if !ok {
			return nil, fmt.Errorf("%q is not key=value", arg)
		}
		key = strings.ReplaceAll(strings.TrimSpace(key), "-", "_")
		if key == "dns" {
			key = "dns_servers"
		}
		if !slices.Contains(known, key) {
			return nil, fmt.Errorf("unknown setting %q: known are %s", key, strings.Join(known, ", "))
		}
		if slices.Contains(req.UpdateMask, key) {
			return nil, fmt.Errorf("%s is given twice", key)
		}
		if err := setField(req.Settings, key, strings.TrimSpace(val)); err != nil {
			return nil, err
		}
		req.UpdateMask = append(req.UpdateMask, key)
	}
	return req, nil
}

func setField(s *pb.Settings, key, val string) error {
	parseBool := func(dst *bool) error {
		b, err := strconv.ParseBool(val)
		if err != nil {
			return fmt.Errorf("%s=%q: want true or false", key, val)
		}
		*dst = b
		return nil
	}
	parseFloat := func(dst *float64) error {
		f, err := strconv.ParseFloat(val, 64)
		if err != nil {
			return fmt.Errorf("%s=%q: want a number", key, val)
		}
		*dst = f
		return nil
	}
	switch key {
	case "kill_switch":
		return parseBool(&s.KillSwitch)
	case "lockdown":
		return parseBool(&s.Lockdown)
	case "ipv6":
		return parseBool(&s.Ipv6)
	case "allow_lan":
		return parseBool(&s.AllowLan)
	case "auto_connect":
		return parseBool(&s.AutoConnect)
	case "dns_servers":
		s.DnsServers = nil
		// "exit", as the settings print an empty list, and "gateway", as
		// they used to.
		if val != "" && val != "exit" && val != "gateway" {
			for _, a := range strings.Split(val, ",") {
				s.DnsServers = append(s.DnsServers, strings.TrimSpace(a))
			}
		}
	case "entry":
		s.Entry = anyToEmpty(val)
	case "exit":
		s.Exit = anyToEmpty(val)
	case "mode":
		m, err := control.ParseMode(val)
		if err != nil {
			return fmt.Errorf("mode: %w", err)
		}
		s.Mode = control.ModeToProto(m)
	case "mix_rate":
		return parseFloat(&s.MixRate)
	case "loop_rate":
		return parseFloat(&s.LoopRate)
	case "mean_delay_ms":
		n, err := strconv.ParseUint(val, 10, 32)
		if err != nil {
			return fmt.Errorf("%s=%q: want a whole number of milliseconds", key, val)
		}
		s.MeanDelayMs = uint32(n)
	default:
		return fmt.Errorf("unknown setting %q", key)
	}
	return nil
}

func anyToEmpty(s string) string {
	if s == "any" {
		return ""
	}
	return s
}

// settingsView is the JSON of settings get, keyed as settings set takes them.
type settingsView struct {
	KillSwitch  bool     `json:"kill_switch"`
	Lockdown    bool     `json:"lockdown"`
	DNSServers  []string `json:"dns_servers"`
	IPv6        bool     `json:"ipv6"`
	AllowLAN    bool     `json:"allow_lan"`
	AutoConnect bool     `json:"auto_connect"`
	Entry       string   `json:"entry"`
	Exit        string   `json:"exit"`
	Mode        string   `json:"mode"`
	MixRate     float64  `json:"mix_rate"`
	LoopRate    float64  `json:"loop_rate"`
	MeanDelayMs int64    `json:"mean_delay_ms"`
}

func writeSettings(w io.Writer, p *pb.Settings, asJSON bool) error {
	s, err := control.SettingsFromProto(p)
	if err != nil {
		return fmt.Errorf("mixvpnd sent settings it cannot have: %w", err)
	}
	dns := make([]string, len(s.DNSServers))
	for i, a := range s.DNSServers {
		dns[i] = a.String()
	}
	v := settingsView{
		KillSwitch: s.KillSwitch, Lockdown: s.Lockdown, DNSServers: dns, IPv6: s.IPv6,
		AllowLAN: s.AllowLAN, AutoConnect: s.AutoConnect, Entry: s.Entry, Exit: s.Exit,
		Mode: s.Mode.String(), MixRate: s.MixRate, LoopRate: s.LoopRate,
		MeanDelayMs: s.MeanDelay.Milliseconds(),
	}
	if asJSON {
		return writeJSON(w, v)
	}
	dnsText := strings.Join(dns, ",")
	if dnsText == "" {
		dnsText = "exit"
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, row := range [][2]string{
		{"kill_switch", strconv.FormatBool(v.KillSwitch)},
		{"lockdown", strconv.FormatBool(v.Lockdown)},
		{"dns_servers", dnsText},
		{"ipv6", strconv.FormatBool(v.IPv6)},
		{"allow_lan", strconv.FormatBool(v.AllowLAN)},
		{"auto_connect", strconv.FormatBool(v.AutoConnect)},
		{"entry", emptyToAny(v.Entry)},
		{"exit", emptyToAny(v.Exit)},
		{"mode", v.Mode},
		{"mix_rate", strconv.FormatFloat(v.MixRate, 'g', -1, 64)},
		{"loop_rate", strconv.FormatFloat(v.LoopRate, 'g', -1, 64)},
		{"mean_delay_ms", strconv.FormatInt(v.MeanDelayMs, 10)},
	} {
		fmt.Fprintf(tw, "%s\t%s\n", row[0], row[1])
	}
	return tw.Flush()
}

func emptyToAny(s string) string {
	if s == "" {
		return "any"
	}
	return s
}
