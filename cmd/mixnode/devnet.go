package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/mixvpn/mixvpn/platform/netns"
)

// The local network: every node in its own network namespace on one
// backbone bridge, the way the real network puts every node on the
// internet. Addresses come from the documentation ranges and exist only
// inside the namespaces the run made.

var (
	backbone4 = netip.MustParsePrefix("198.51.100.0/24")
	backbone6 = netip.MustParsePrefix("fd6d:7876::/64")
)

// devHost is one host of the local network.
type devHost struct {
	Name    string     `json:"name"`
	Role    string     `json:"role"` // directory, entry, mix, exit, internet, client
	Layer   int        `json:"layer,omitempty"`
	Country string     `json:"country,omitempty"`
	NS      string     `json:"ns,omitempty"`
	Addr4   netip.Addr `json:"addr4"`
	Addr6   netip.Addr `json:"addr6"`
}

// devnetPlan lists the hosts: a directory, 2 entries, 3 layers of 2
// mixes, 2 exits in different countries, the internet host and a client.
func devnetPlan() []devHost {
	host := func(name, role string, layer int, country string, n byte) devHost {
		a4 := backbone4.Addr().As4()
		a4[3] = n
		a6 := backbone6.Addr().As16()
		a6[15] = n
		return devHost{Name: name, Role: role, Layer: layer, Country: country, Addr4: netip.AddrFrom4(a4), Addr6: netip.AddrFrom16(a6)}
	}
	return []devHost{
		host("dir", "directory", 0, "", 2),
		host("entry1", "entry", 0, "DE", 11),
		host("entry2", "entry", 0, "NL", 12),
		host("mix1a", "mix", 1, "", 21), host("mix1b", "mix", 1, "", 22),
		host("mix2a", "mix", 2, "", 31), host("mix2b", "mix", 2, "", 32),
		host("mix3a", "mix", 3, "", 41), host("mix3b", "mix", 3, "", 42),
		host("exit1", "exit", 0, "CH", 51),
		host("exit2", "exit", 0, "IS", 52),
		host("inet", "internet", 0, "", 80),
		host("client", "client", 0, "", 100),
	}
}

// wgDeviceName names a gateway's WireGuard device: "wg", the run's last
// six characters and the host's name, cut to an interface name's limit.
func wgDeviceName(runID, host string) string {
	name := "wg" + runID[max(0, len(runID)-6):] + host
	return name[:min(len(name), 15)]
}

// supervisor starts processes and stops them all, gently then firmly.
type supervisor struct {
	log    *slog.Logger
	logDir string

	mu    sync.Mutex
	procs []*exec.Cmd
	names []string // names[i] is what procs[i] was started as
}

// start runs cmd with its output in logDir/name.log.
func (s *supervisor) start(name string, cmd *exec.Cmd) error {
	f, err := os.Create(filepath.Join(s.logDir, name+".log"))
	if err != nil {
		return fmt.Errorf("devnet: log for %s: %w", name, err)
	}
	cmd.Stdout, cmd.Stderr = f, f
	ownGroup(cmd)
	if err := cmd.Start(); err != nil {
		f.Close()
		return fmt.Errorf("devnet: start %s: %w", name, err)
	}
	go func() {
		cmd.Wait()
		f.Close()
	}()
	s.mu.Lock()
	s.procs = append(s.procs, cmd)
	s.names = append(s.names, name)
	s.mu.Unlock()
	s.log.Debug("started", "name", name, "pid", cmd.Process.Pid)
	return nil
}

// stop sends SIGTERM to every process group, waits up to grace, then kills.
func (s *supervisor) stop(grace time.Duration) {
	s.mu.Lock()
	procs := s.procs
	s.procs, s.names = nil, nil
	s.mu.Unlock()
	for _, p := range procs {
		terminateGroup(p.Process)
	}
	deadline := time.Now().Add(grace)
	for _, p := range procs {
		for p.ProcessState == nil && time.Now().Before(deadline) {
			if !running(p.Process) {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		killGroup(p.Process)
	}
}

// devnetState is written for the demo and the end-to-end tests: where
// everything is and how to reach it.
type devnetState struct {
	ID           string    `json:"id"`
	DirectoryURL string    `json:"directory_url"`
	DirectoryKey string    `json:"directory_key"`
	LogDir       string    `json:"log_dir"`
	Hosts        []devHost `json:"hosts"`
}

func writeState(path string, st devnetState) error {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// buildLab makes the namespaces and the backbone for plan.
func buildLab(plan []devHost) (*netns.Lab, map[string]*netns.Host, error) {
	lab, err := netns.NewLab("mv")
	if err != nil {
		return nil, nil, err
	}
	hub, err := lab.AddHost("hub")
	if err == nil {
		err = hub.Bridge()
	}
	hosts := make(map[string]*netns.Host)
	for i := range plan {
		if err != nil {
			break
		}
		var h *netns.Host
		if h, err = lab.AddHost(plan[i].Name); err != nil {
			break
		}
		plan[i].NS = h.NS
		hosts[plan[i].Name] = h
		if plan[i].Role != "client" {
			var iface string
			iface, err = lab.Attach(hub, h, []netip.Prefix{
				netip.PrefixFrom(plan[i].Addr4, backbone4.Bits()),
				netip.PrefixFrom(plan[i].Addr6, backbone6.Bits()),
			})
			if err == nil && plan[i].Role == "entry" {
				err = quickAck(h, iface, plan[i])
			}
			continue
		}
		// The client is a home machine, not a neighbour of the servers:
		// everything is behind its default route, so nothing reaches
		// the "internet" host except as the VPN routes it.
		var iface string
		iface, err = lab.Attach(hub, h, []netip.Prefix{netip.PrefixFrom(plan[i].Addr4, 32), netip.PrefixFrom(plan[i].Addr6, 128)})
		if err == nil {
			err = h.Run("ip", "route", "add", "default", "dev", iface)
		}
		if err == nil {
			err = h.Run("ip", "-6", "route", "add", "default", "dev", iface)
		}
	}
	if err != nil {
		return nil, nil, errors.Join(err, lab.Close())
	}
	return lab, hosts, nil
}

// quickAck makes an entry's kernel acknowledge every segment from its
// clients as it arrives (the route's quickack flag), as docs/network.md
// asks of entry operators. Otherwise it delays ACKs by how far its reader
// lags, and on a busy machine that lag, visible on the client's link as
// the entry's ACK rate, grows when the client downloads.
func quickAck(h *netns.Host, iface string, e devHost) error {
	if err := h.Run("ip", "route", "replace", backbone4.String(), "dev", iface, "proto", "kernel", "scope", "link",
		"src", e.Addr4.String(), "quickack", "1"); err != nil {
		return err
	}
	return h.Run("ip", "-6", "route", "replace", backbone6.String(), "dev", iface, "proto", "kernel", "metric", "256", "quickack", "1")
}

// waitFor polls check until it succeeds or ctx ends.
func waitFor(ctx context.Context, what string, check func() error) error {
	var err error
	for {
		if err = check(); err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("devnet: waiting for %s: %w (last error: %v)", what, ctx.Err(), err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// devnetOptions configures the local network.
type devnetOptions struct {
	RunDir    string
	StateFile string
	Demo      bool
	Bench     bool
	// BenchRates, if set, measures Anonymous mode at each of these λ_P.
	BenchRates string
	Duration   time.Duration
	Epoch      time.Duration
	Log        *slog.Logger
}

func devnetCommand(logger func() *slog.Logger) *cobra.Command {
	var o devnetOptions
	cmd := &cobra.Command{
		Use:   "devnet",
		Short: "Start the whole network on this machine: directory, 2 entries, 3×2 mixes, 2 exits, an internet host",
		Long: `devnet starts every node of a small mixnet on this machine. As root, each node runs in its own
network namespace on a shared bridge, and exits reach an "internet" host through their own TUN and NAT;
it stops cleanly on Ctrl-C and removes every namespace it made. --demo sends probe traffic through the
network, prints what happened and stops.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.Log = logger()
			return runDevnet(cmd.Context(), o)
		},
	}
	cmd.Flags().StringVar(&o.RunDir, "run-dir", "", "directory for configs, keys and logs (default: a new temporary one)")
	cmd.Flags().StringVar(&o.StateFile, "state", "", "write where everything is to this JSON file")
	cmd.Flags().BoolVar(&o.Demo, "demo", false, "send probe traffic through the network, report and stop")
	cmd.Flags().BoolVar(&o.Bench, "bench", false, "measure the network, print key=value figures and stop")
	cmd.Flags().StringVar(&o.BenchRates, "bench-rates", "", "measure Anonymous mode at each of these comma-separated λ_P (packets/s), print key=value figures and stop")
	cmd.Flags().DurationVar(&o.Duration, "duration", 0, "stop after this long (default: run until interrupted)")
	cmd.Flags().DurationVar(&o.Epoch, "epoch", time.Hour, "key epoch length")
	return cmd
}

func runDevnet(ctx context.Context, o devnetOptions) error {
	log := o.Log
	if o.RunDir == "" {
		dir, err := os.MkdirTemp("", "mixvpn-devnet-")
		if err != nil {
			return err
		}
		o.RunDir = dir
	}
	if err := os.MkdirAll(o.RunDir, 0o700); err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	plan := devnetPlan()
	hosts := make(map[string]host)
	runID := "loopback"
	internetPorts := []string{"--http", ":80", "--dns", ":53", "--echo", ":7"}
	if os.Geteuid() == 0 {
		lab, nsHosts, err := buildLab(plan)
		if err != nil {
			return fmt.Errorf("devnet: %w", err)
		}
		defer func() {
			if err := lab.Close(); err != nil {
				log.Error("removing namespaces", "err", err)
			} else {
				log.Info("namespaces removed", "run", lab.ID())
			}
		}()
		for name, h := range nsHosts {
			hosts[name] = h
		}
		runID = lab.ID()
	} else {
		// Without root: every host on its own loopback address, 127.0.0.N,
		// no namespaces, unprivileged ports for the internet host, and
		// exits without a TUN device (they carry cover, loops and session
		// control, but no IP traffic).
		log.Warn("not root: running the local network on loopback addresses; exits carry no IP traffic")
		for i := range plan {
			plan[i].Addr4 = netip.AddrFrom4([4]byte{127, 0, 0, plan[i].Addr4.As4()[3]})
			plan[i].Addr6 = netip.IPv6Loopback()
			hosts[plan[i].Name] = localHost{}
		}
		internetPorts = []string{"--http", ":8081", "--dns", ":5353", "--echo", ":7007"}
	}
	sup := &supervisor{log: log, logDir: o.RunDir}
	defer sup.stop(3 * time.Second)

	// The directory first: the others pin its key.
	genesis := time.Now().Truncate(time.Minute).Add(-time.Minute)
	var dirHost devHost
	for _, h := range plan {
		if h.Role == "directory" {
			dirHost = h
		}
	}
	dirURL := "http://" + net.JoinHostPort(dirHost.Addr4.String(), "8080")
	dirCfg := nodeConfig{ID: "directory", Role: "directory", Listen: net.JoinHostPort(dirHost.Addr4.String(), "8080"),
		DataDir: filepath.Join(o.RunDir, "directory"), EpochGenesis: genesis, EpochLength: duration(o.Epoch)}
	if _, err := startNodeProcess(sup, hosts[dirHost.Name], self, o.RunDir, dirCfg); err != nil {
		return err
	}
	var pub string
	waitCtx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if err := waitFor(waitCtx, "the directory key", func() error {
		b, err := os.ReadFile(filepath.Join(dirCfg.DataDir, "authority.pub"))
		pub = strings.TrimSpace(string(b))
		return err
	}); err != nil {
		return err
	}

	nodes := 0
	for _, h := range plan {
		cfg := nodeConfig{ID: h.Name, Role: h.Role, Layer: h.Layer, Country: h.Country,
			Listen: net.JoinHostPort(h.Addr4.String(), "1789"), DataDir: filepath.Join(o.RunDir, h.Name),
			Metrics:      net.JoinHostPort(h.Addr4.String(), "9100"),
			DirectoryURL: dirURL, DirectoryKey: pub, EpochGenesis: genesis, EpochLength: duration(o.Epoch),
			PublishInterval: duration(5 * time.Second), RefreshInterval: duration(2 * time.Second)}
		if (h.Role == "entry" || h.Role == "exit") && os.Geteuid() == 0 {
			pool := wireGuardPools[h.Name]
			// UAPI sockets live in one directory for all namespaces: names
			// must differ between hosts and between local networks running
			// side by side, within the 15 bytes of an interface name.
			cfg.WireGuard = &wireGuardConfig{Device: wgDeviceName(runID, h.Name), Port: 51820, Prefix4: pool[0], Prefix6: pool[1]}
		}
		switch h.Role {
		case "entry", "mix":
		case "exit":
			pool := exitPools[h.Name]
			dev := "mvexit0"
			if os.Geteuid() != 0 {
				dev = noDevice
			}
			cfg.Exit = &exitConfig{Device: dev, Prefix4: pool[0], Prefix6: pool[1]}
			if os.Geteuid() == 0 {
				// The internet host's DNS server (port 53 on all its
				// addresses) is the resolver the exits offer, as a real
				// exit offers its own: a client that names none resolves
				// through its tunnel. Without root exits carry no IP
				// and the server is on port 5353, so they offer none.
				for _, inet := range plan {
					if inet.Role == "internet" {
						cfg.Exit.DNS = []string{inet.Addr4.String(), inet.Addr6.String()}
					}
				}
			}
		case "internet":
			args := append([]string{"internet", "--name", "internet.mixvpn.test=" + h.Addr4.String(),
				"--name", "internet.mixvpn.test=" + h.Addr6.String()}, internetPorts...)
			cmd := hosts[h.Name].Command(ctx, self, args...)
			if err := sup.start(h.Name, cmd); err != nil {
				return err
			}
			if _, err := exec.LookPath("iperf3"); err == nil {
				if err := sup.start("iperf3", hosts[h.Name].Command(ctx, "iperf3", "-s")); err != nil {
					return err
				}
			}
			continue
		default:
			continue
		}
		if _, err := startNodeProcess(sup, hosts[h.Name], self, o.RunDir, cfg); err != nil {
			return err
		}
		nodes++
	}

	// Ready when the directory lists every node.
	client := hosts["client"]
	if err := waitFor(waitCtx, "all nodes in the directory", func() error {
		_, err := client.Output(self, "probe", "--directory", dirURL, "--key", pub, "--ready", fmt.Sprint(nodes))
		return err
	}); err != nil {
		return err
	}
	st := devnetState{ID: runID, DirectoryURL: dirURL, DirectoryKey: pub, LogDir: o.RunDir, Hosts: plan}
	if o.StateFile != "" {
		if err := writeState(o.StateFile, st); err != nil {
			return err
		}
	}
	fmt.Printf("local network %s is up: %d nodes, directory %s, logs in %s\n", runID, nodes, dirURL, o.RunDir)
	for _, h := range plan {
		fmt.Printf("  %-9s %-9s %-15s %s %s\n", h.Name, h.Role, h.Addr4, h.NS, h.Country)
	}

	if o.BenchRates != "" && os.Geteuid() == 0 {
		rates, err := parseRates(o.BenchRates)
		if err != nil {
			return err
		}
		cd, err := startClientDaemon(ctx, sup, client, self, o.RunDir, dirURL, pub, hostAddr(plan, "inet"))
		if err != nil {
			return err
		}
		// 16 MiB, so that the steady state and not TCP's start sets the figure.
		return runRateTable(ctx, cd, sup, hostAddr(plan, "inet"), rates, 16<<20)
	}
	if o.Bench {
		cmd := client.Command(ctx, self, "probe", "--directory", dirURL, "--key", pub, "--packets", "500", "--kv")
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		if err := cmd.Run(); err != nil || os.Geteuid() != 0 {
			return err
		}
		cd, err := startClientDaemon(ctx, sup, client, self, o.RunDir, dirURL, pub, hostAddr(plan, "inet"))
		if err != nil {
			return err
		}
		return runClientBench(ctx, cd, hostAddr(plan, "inet"))
	}
	if o.Demo {
		cmd := client.Command(ctx, self, "probe", "--directory", dirURL, "--key", pub, "--packets", "200")
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		if err := cmd.Run(); err != nil || os.Geteuid() != 0 {
			return err
		}
		cd, err := startClientDaemon(ctx, sup, client, self, o.RunDir, dirURL, pub, hostAddr(plan, "inet"))
		if err != nil {
			return err
		}
		return runClientDemo(ctx, cd)
	}
	if o.Duration > 0 {
		var c context.CancelFunc
		ctx, c = context.WithTimeout(ctx, o.Duration)
		defer c()
	}
	fmt.Println("press Ctrl-C to stop")
	<-ctx.Done()
	return nil
}

// wireGuardPools are each gateway's Fast-mode client pools.
var wireGuardPools = map[string][2]string{
	"entry1": {"10.101.0.0/16", "fd00:6d77:11::/64"},
	"entry2": {"10.102.0.0/16", "fd00:6d77:12::/64"},
	"exit1":  {"10.151.0.0/16", "fd00:6d77:51::/64"},
	"exit2":  {"10.152.0.0/16", "fd00:6d77:52::/64"},
}

// exitPools are the session address pools of each exit.
var exitPools = map[string][2]string{
	"exit1": {"100.64.0.0/16", "fd00:6d76:1::/64"},
	"exit2": {"100.65.0.0/16", "fd00:6d76:2::/64"},
}

// startNodeProcess writes cfg and starts `mixnode run` in h.
func startNodeProcess(sup *supervisor, h host, self, runDir string, cfg nodeConfig) (string, error) {
	path := filepath.Join(runDir, cfg.ID+".json")
	b, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return "", err
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		return "", err
	}
	cmd := h.Command(context.Background(), self, "run", "--config", path)
	// Ten nodes share this machine's cores, where each would have its own
	// machine: one P each keeps the Go schedulers from spinning against
	// each other (measured: about a third more anonymous goodput on two
	// cores).
	cmd.Env = append(os.Environ(), "GOMAXPROCS=1")
	return path, sup.start(cfg.ID, cmd)
}

// host runs commands on one host of the local network: inside its
// namespace as root, or directly on this machine otherwise.
type host interface {
	Command(ctx context.Context, name string, args ...string) *exec.Cmd
	Output(name string, args ...string) (string, error)
}

// localHost runs commands directly (the unprivileged, loopback network).
type localHost struct{}

func (localHost) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, name, args...)
}

func (localHost) Output(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s: %w: %s", name, err, out)
	}
	return string(out), nil
}

// hostAddr is the IPv4 address of the planned host name.
func hostAddr(plan []devHost, name string) netip.Addr {
	for _, h := range plan {
		if h.Name == name {
			return h.Addr4
		}
	}
	return netip.Addr{}
}
