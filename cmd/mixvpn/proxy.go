package main

import (
	"bufio"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/mixvpn/mixvpn/mixnet/client"
	"github.com/mixvpn/mixvpn/tunnel/socks"
)

// proxyOptions are the flags of `mixvpn proxy`.
type proxyOptions struct {
	listen, directory, directoryKey, entry, exit string
	dns                                          []string
	resolvConf                                   string
	mixRate, loopRate                            float64
	meanDelay, upTimeout                         time.Duration
	allowRemote, debug                           bool
}

// proxyCommand is `mixvpn proxy`: Anonymous mode without the daemon and
// without root, as a SOCKS5 proxy on loopback.
func proxyCommand(cfg cliConfig) *cobra.Command {
	var o proxyOptions
	cmd := &cobra.Command{
		Use:   "proxy --socks5 127.0.0.1:1080 [--directory URL --directory-key KEY] [--entry ID|COUNTRY] [--exit ID|COUNTRY] [--dns IP]",
		Short: "Run a SOCKS5 proxy through the mixnet in this process, without mixvpnd or root",
		Long: "proxy joins the mixnet itself (no daemon, no TUN device, no root) and serves\n" +
			"SOCKS5 (CONNECT and UDP ASSOCIATE) on a loopback address: point a browser or\n" +
			"curl --socks5-hostname at it and its connections travel the five hops of\n" +
			"Anonymous mode, with cover traffic, from the inner address the exit assigns.\n" +
			"Names in requests are resolved through the tunnel by the DNS servers given with\n" +
			"--dns (default: the public nameservers of /etc/resolv.conf), never by the local\n" +
			"resolver. Only traffic sent to the proxy is protected; the rest of the machine\n" +
			"is not.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runProxy(cmd.Context(), o, cfg.Stdout, cfg.Stderr)
		},
	}
	env := func(k string) string {
		if cfg.Getenv == nil {
			return ""
		}
		return cfg.Getenv(k)
	}
	f := cmd.Flags()
	f.StringVar(&o.listen, "socks5", "127.0.0.1:1080", "address to serve SOCKS5 on (loopback unless --allow-remote)")
	f.StringVar(&o.directory, "directory", env("MIXVPN_DIRECTORY"), "directory authority URL (env MIXVPN_DIRECTORY)")
	f.StringVar(&o.directoryKey, "directory-key", env("MIXVPN_DIRECTORY_KEY"), "the directory's base64 ed25519 key, pinned (env MIXVPN_DIRECTORY_KEY)")
	f.StringVar(&o.entry, "entry", "", "entry gateway ID or country code (default: any)")
	f.StringVar(&o.exit, "exit", "", "exit gateway ID or country code (default: any)")
	f.StringSliceVar(&o.dns, "dns", nil, "DNS servers to resolve names with, through the tunnel (default: the public nameservers of /etc/resolv.conf)")
	f.StringVar(&o.resolvConf, "resolv-conf", "/etc/resolv.conf", "where the default DNS servers are read from")
	f.Float64Var(&o.mixRate, "mix-rate", client.DefaultRate, "λ_P: real-or-cover packets per second")
	f.Float64Var(&o.loopRate, "loop-rate", client.DefaultLoopRate, "λ_L: loop cover packets per second")
	f.DurationVar(&o.meanDelay, "mean-delay", client.DefaultMeanDelay, "mean delay each mix holds a packet")
	f.DurationVar(&o.upTimeout, "timeout", time.Minute, "how long to wait for the mixnet session")
	f.BoolVar(&o.allowRemote, "allow-remote", false, "allow a listen address other than loopback: anyone who reaches it uses your session")
	f.BoolVar(&o.debug, "debug", false, "debug logging")
	return cmd
}

func runProxy(ctx context.Context, o proxyOptions, stdout, stderr io.Writer) error {
	level := slog.LevelInfo
	if o.debug {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	if o.directory == "" {
		return errors.New("--directory is required (or MIXVPN_DIRECTORY)")
	}
	key, err := base64.StdEncoding.DecodeString(o.directoryKey)
	if err != nil || len(key) != 32 {
		return errors.New("--directory-key must be the directory's base64 ed25519 public key")
	}
	dns, err := proxyDNS(o.dns, o.resolvConf)
	if err != nil {
		return err
	}
	if len(dns) == 0 {
		log.Warn("no DNS server: requests by name will fail; give one with --dns", "resolv_conf", o.resolvConf)
	}
	if err := checkListen(o.listen, o.allowRemote); err != nil {
		return err
	}
	// Listen first: a port already in use is found before the mixnet is
	// joined.
	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	defer ln.Close()
	front, err := socks.NewFront(socks.Config{DNS: dns, Logger: log, Connect: client.ConnectConfig{
		DirectoryURL: o.directory, DirectoryKey: key, Entry: o.entry, Exit: o.exit, Logger: log,
		Client: client.Config{Rate: o.mixRate, LoopRate: o.loopRate, MeanDelay: o.meanDelay},
	}})
	if err != nil {
		return err
	}
	defer front.Close()
	upCtx, cancel := context.WithTimeout(ctx, o.upTimeout)
	err = front.Up(upCtx)
	cancel()
	if err != nil {
		return err
	}
	srv, err := socks.NewServer(socks.ServerConfig{Dialer: front, Packets: front, Logger: log})
	if err != nil {
		return err
	}
	st := front.Stats()
	fmt.Fprintf(stdout, "SOCKS5 proxy on %s through the mixnet: entry %s, exit %s, inner address %s\n", ln.Addr(), st.Entry, st.Exit, st.V4)
	err = srv.Serve(ctx, ln)
	st, ss := front.Stats(), srv.Stats()
	log.Info("proxy stopped", "connections", ss.Connected, "failed", ss.Failed, "bytes_up", ss.BytesUp, "bytes_down", ss.BytesDown,
		"udp_associations", ss.Associations, "datagrams_up", ss.DatagramsUp, "datagrams_down", ss.DatagramsDown,
		"real_packets", st.RealSent, "cover_packets", st.CoverSent, "loops_sent", st.LoopsSent, "loops_returned", st.LoopsReturned)
	return err
}

// checkListen refuses a listen address beyond loopback unless allowed: a
// SOCKS5 server without authentication there would lend the session, and
// its anonymity set, to anyone who can reach the port.
func checkListen(addr string, allowRemote bool) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("--socks5 %q: %w", addr, err)
	}
	if allowRemote {
		return nil
	}
	if host == "localhost" {
		return nil
	}
	if ip, err := netip.ParseAddr(host); err == nil && ip.IsLoopback() {
		return nil
	}
	return fmt.Errorf("--socks5 %s is not a loopback address: anyone who reaches it could use the proxy (use --allow-remote if you mean it)", addr)
}

// proxyDNS is the resolvers names are looked up with: those given, or the
// nameservers in resolvConf that can be asked from the exit's side. A
// loopback stub (systemd-resolved's 127.0.0.53), a link-local or a
// private-range resolver is this machine's or this network's, and a query
// sent to it through the tunnel would reach nothing, or the exit's own
// network.
func proxyDNS(given []string, resolvConf string) ([]netip.Addr, error) {
	var out []netip.Addr
	if len(given) > 0 {
		for _, s := range given {
			a, err := netip.ParseAddr(strings.TrimSpace(s))
			if err != nil || a.Zone() != "" || a.IsUnspecified() || a.IsLoopback() || a.IsMulticast() {
				return nil, fmt.Errorf("--dns %q: want the IP address of a resolver reachable through the tunnel", s)
			}
			out = append(out, a.Unmap())
		}
		return out, nil
	}
	f, err := os.Open(resolvConf)
	if err != nil {
		return nil, nil
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 || fields[0] != "nameserver" {
			continue
		}
		a, err := netip.ParseAddr(fields[1])
		if err != nil || !a.IsGlobalUnicast() || a.IsPrivate() || a.Zone() != "" {
			continue
		}
		out = append(out, a.Unmap())
	}
	return out, nil
}
