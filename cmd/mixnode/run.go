package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime/pprof"
	"time"

	"github.com/spf13/cobra"

	"github.com/mixvpn/mixvpn/mixnet/directory"
	"github.com/mixvpn/mixvpn/mixnet/gateway"
	"github.com/mixvpn/mixvpn/mixnet/link"
	"github.com/mixvpn/mixvpn/mixnet/server"
	"github.com/mixvpn/mixvpn/platform/entryfilter"
	"github.com/mixvpn/mixvpn/platform/exitnat"
	"github.com/mixvpn/mixvpn/platform/sysmon"
	"github.com/mixvpn/mixvpn/platform/wgserver"
)

// nodeConfig is a node's configuration file (JSON).
type nodeConfig struct {
	ID      string `json:"id"`
	Role    string `json:"role"` // directory, entry, mix, exit
	Layer   int    `json:"layer,omitempty"`
	Country string `json:"country,omitempty"`
	// Listen is the link listener (the HTTP listener for the directory).
	Listen    string `json:"listen"`
	Advertise string `json:"advertise,omitempty"`
	DataDir   string `json:"data_dir"`
	Metrics   string `json:"metrics,omitempty"`
	// DirectoryURL and DirectoryKey (base64 ed25519) pin the authority.
	DirectoryURL string `json:"directory_url,omitempty"`
	DirectoryKey string `json:"directory_key,omitempty"`
	// EpochGenesis (RFC 3339) and EpochLength must match the authority's.
	EpochGenesis time.Time `json:"epoch_genesis"`
	EpochLength  duration  `json:"epoch_length"`
	// PublishInterval and RefreshInterval pace the directory traffic.
	PublishInterval duration `json:"publish_interval,omitempty"`
	RefreshInterval duration `json:"refresh_interval,omitempty"`
	// Exit is the exit gateway's device and address pools.
	Exit *exitConfig `json:"exit,omitempty"`
	// WireGuard runs a gateway's Fast-mode WireGuard server.
	WireGuard *wireGuardConfig `json:"wireguard,omitempty"`
}

type wireGuardConfig struct {
	Device  string `json:"device,omitempty"`
	Port    int    `json:"port"`
	Prefix4 string `json:"prefix4"`
	Prefix6 string `json:"prefix6"`
	// ExtraExits (entry only) are exit WireGuard endpoints, ip:port, that
	// the entry's clients may reach besides the directory's exits: the
	// operator's own exits, for clients who bring their own exit
	// configuration. The entry forwards nothing else.
	ExtraExits []string `json:"extra_exits,omitempty"`
}

type exitConfig struct {
	Device  string `json:"device,omitempty"`
	Prefix4 string `json:"prefix4"`
	Prefix6 string `json:"prefix6"`
	// DNS are resolvers the exit's clients reach through it (its own, or
	// one it trusts), published in its descriptor: clients whose user
	// named no resolver use them, so that their lookups leave by the exit
	// like the rest of their traffic. An exit without them leaves such
	// clients unable to connect, never resolving outside the tunnel.
	DNS []string `json:"dns,omitempty"`
}

// dns parses the exit's resolvers and checks them as the directory will.
// The section is an exit's (validate refuses it with resolvers on any
// other node), hence RoleExit.
func (e *exitConfig) dns() ([]netip.Addr, error) {
	var out []netip.Addr
	for _, s := range e.DNS {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("exit.dns: %q is not an IP address", s)
		}
		out = append(out, a)
	}
	if err := directory.CheckResolvers(directory.RoleExit, out); err != nil {
		return nil, fmt.Errorf("exit.dns: %w", err)
	}
	return out, nil
}

// duration is a time.Duration written as "15ms", "1h".
type duration time.Duration

func (d duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

func (d *duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration must be a string like \"1h\": %w", err)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*d = duration(v)
	return nil
}

func loadConfig(path string, override func(*nodeConfig)) (*nodeConfig, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	var c nodeConfig
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	if override != nil {
		override(&c)
	}
	if err := c.validate(); err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return &c, nil
}

func (c *nodeConfig) validate() error {
	if c.ID == "" || c.DataDir == "" || c.Listen == "" {
		return errors.New("id, listen and data_dir are required")
	}
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	if c.EpochLength <= 0 || c.EpochGenesis.IsZero() {
		return errors.New("epoch_genesis and epoch_length are required")
	}
	switch c.Role {
	case "directory":
		return nil
	case "entry", "mix", "exit":
	default:
		return fmt.Errorf("role %q: want directory, entry, mix or exit", c.Role)
	}
	if c.DirectoryURL == "" || c.DirectoryKey == "" {
		return errors.New("directory_url and directory_key are required")
	}
	if c.Role == "exit" && c.Exit == nil {
		return errors.New("an exit needs an \"exit\" section with its address pools")
	}
	if c.Exit != nil {
		if c.Role != "exit" && len(c.Exit.DNS) > 0 {
			return errors.New("exit.dns is for exits")
		}
		if _, err := c.Exit.dns(); err != nil {
			return err
		}
	}
	if c.WireGuard != nil && c.Role == "mix" {
		return errors.New("only gateways run WireGuard")
	}
	if c.WireGuard != nil && len(c.WireGuard.ExtraExits) > 0 {
		if c.Role != "entry" {
			return errors.New("wireguard.extra_exits is for entries")
		}
		if _, err := c.WireGuard.extraExits(); err != nil {
			return err
		}
	}
	return nil
}

func (w *wireGuardConfig) extraExits() ([]netip.AddrPort, error) {
	var out []netip.AddrPort
	for _, s := range w.ExtraExits {
		ap, err := netip.ParseAddrPort(s)
		if err != nil || ap.Port() == 0 {
			return nil, fmt.Errorf("wireguard.extra_exits: %q is not an ip:port", s)
		}
		out = append(out, ap)
	}
	return out, nil
}

// device is the WireGuard interface's name.
func (w *wireGuardConfig) device() string { return cmpOr(w.Device, "mvwg0") }

func (c *nodeConfig) epochs() directory.Epochs {
	return directory.Epochs{Genesis: c.EpochGenesis, Length: time.Duration(c.EpochLength)}
}

func runCommand(logger func() *slog.Logger) *cobra.Command {
	var path string
	var over nodeConfig
	var tune runtimeTuning
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run one node (directory, entry, mix or exit) from a configuration file",
		Long:  "run starts one node from a JSON configuration file; the flags override the file's fields.",
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig(path, func(c *nodeConfig) {
				for flag, set := range map[string]func(){
					"id": func() { c.ID = over.ID }, "listen": func() { c.Listen = over.Listen },
					"data-dir": func() { c.DataDir = over.DataDir }, "metrics": func() { c.Metrics = over.Metrics },
					"advertise": func() { c.Advertise = over.Advertise },
				} {
					if cmd.Flags().Changed(flag) {
						set()
					}
				}
			})
			if err != nil {
				return err
			}
			log := logger()
			stop, err := tune.apply(cfg.ID, log)
			if err != nil {
				return err
			}
			defer stop()
			return runNode(cmd.Context(), cfg, log)
		},
	}
	cmd.Flags().StringVarP(&path, "config", "c", "", "configuration file (JSON)")
	cmd.Flags().StringVar(&over.ID, "id", "", "node id")
	cmd.Flags().StringVar(&over.Listen, "listen", "", "link (or, for the directory, HTTP) listen address")
	cmd.Flags().StringVar(&over.Advertise, "advertise", "", "address published in the directory")
	cmd.Flags().StringVar(&over.DataDir, "data-dir", "", "directory for the node's keys")
	cmd.Flags().StringVar(&over.Metrics, "metrics", "", "Prometheus metrics listen address")
	cmd.Flags().StringVar(&tune.CPUProfile, "cpuprofile", os.Getenv(envCPUProfileDir),
		"write a CPU profile of the whole run to this file, or to ID.cpu.pprof in it if it is a directory (default $"+envCPUProfileDir+")")
	cmd.Flags().DurationVar(&tune.SysmonSlack, "sysmon-slack", envDuration(envSysmonSlack, defaultSysmonSlack),
		"timer slack for the Go runtime's monitor thread (Linux), so that it polls at most about this often; 0 leaves it alone (default $"+envSysmonSlack+" or 1ms)")
	cmd.MarkFlagRequired("config")
	return cmd
}

func runNode(ctx context.Context, c *nodeConfig, log *slog.Logger) error {
	if c.Role == "directory" {
		return runDirectory(ctx, c, log)
	}
	key, err := base64.StdEncoding.DecodeString(c.DirectoryKey)
	if err != nil || len(key) != ed25519.PublicKeySize {
		return fmt.Errorf("directory_key is not a base64 ed25519 public key")
	}
	cfg := server.Config{
		ID: c.ID, Role: directory.Role(c.Role), Layer: c.Layer, Country: c.Country,
		Listen: c.Listen, Advertise: c.Advertise, DataDir: c.DataDir,
		DirectoryURL: c.DirectoryURL, DirectoryKey: key, Epochs: c.epochs(),
		PublishInterval: time.Duration(c.PublishInterval), RefreshInterval: time.Duration(c.RefreshInterval),
		MetricsListen: c.Metrics, Logger: log,
	}
	if c.Role == "entry" && c.WireGuard != nil {
		// The filter goes in before the WireGuard server starts: until
		// the first document, clients reach only the operator's exits.
		extra, err := c.WireGuard.extraExits()
		if err != nil {
			return err
		}
		filter, err := entryfilter.Install(entryfilter.Config{Interface: c.WireGuard.device(), Static: extra, Logger: log})
		if err != nil {
			return err
		}
		defer filter.Close()
		cfg.OnDocument = func(doc *directory.Document) {
			if err := filter.SetExits(exitEndpoints(doc)); err != nil {
				log.Error("entry forward filter not updated; it keeps the previous exits", "err", err)
			}
		}
	}
	var wgPools []netip.Prefix
	if c.WireGuard != nil {
		stop, pools, err := startWireGuard(c, &cfg, log)
		if err != nil {
			return err
		}
		defer stop()
		wgPools = pools
	}
	if c.Role == "entry" && len(wgPools) > 0 {
		// Clients' inner tunnels leave the entry for exits with the entry's
		// own address, so exits never see a client's.
		if err := exitnat.EnableForwarding(); err != nil {
			return err
		}
		if err := exitnat.Masquerade("mixvpn_entry", wgPools...); err != nil {
			return err
		}
		defer exitnat.RemoveTable("mixvpn_entry")
	}
	if c.Role == "exit" {
		if cfg.Prefix4, err = netip.ParsePrefix(c.Exit.Prefix4); err != nil {
			return fmt.Errorf("exit prefix4: %w", err)
		}
		if cfg.Prefix6, err = netip.ParsePrefix(c.Exit.Prefix6); err != nil {
			return fmt.Errorf("exit prefix6: %w", err)
		}
		if cfg.DNS, err = c.Exit.dns(); err != nil {
			return err
		}
		if len(cfg.DNS) == 0 {
			log.Warn("exit advertises no DNS resolver (exit.dns): clients that set none cannot connect through it")
		}
		if c.Exit.Device == noDevice {
			log.Warn("exit has no packet device: sessions open, IP packets are dropped")
			cfg.ExitDevice = newDiscardDevice(ctx)
		} else {
			dev, err := exitnat.Open(exitnat.Config{Name: c.Exit.Device, Prefix4: cfg.Prefix4, Prefix6: cfg.Prefix6, Extra: wgPools})
			if err != nil {
				return err
			}
			defer dev.Close()
			cfg.ExitDevice = dev
		}
	}
	return server.Run(ctx, cfg)
}

// runDirectory serves the authority. Its key is made on first start; the
// public half is written beside it for operators to pin.
func runDirectory(ctx context.Context, c *nodeConfig, log *slog.Logger) error {
	key, err := server.LoadOrCreateIdentity(filepath.Join(c.DataDir, "authority.key"))
	if err != nil {
		return err
	}
	pub := base64.StdEncoding.EncodeToString(key.Public().(ed25519.PublicKey))
	if err := os.WriteFile(filepath.Join(c.DataDir, "authority.pub"), []byte(pub+"\n"), 0o644); err != nil {
		return err
	}
	auth, err := directory.NewAuthority(directory.AuthorityConfig{Key: key, Epochs: c.epochs(), Logger: log})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", c.Listen)
	if err != nil {
		return fmt.Errorf("directory: listen: %w", err)
	}
	log.Info("directory serving", "listen", c.Listen, "key", pub)
	return auth.Serve(ctx, ln)
}

// noDevice as an exit's device name runs the exit without a TUN, for the
// unprivileged local network.
const noDevice = "none"

// discardDevice is a packet device that drops what is written and never
// has anything to read.
type discardDevice struct{ done <-chan struct{} }

func newDiscardDevice(ctx context.Context) discardDevice { return discardDevice{done: ctx.Done()} }

func (d discardDevice) Read([][]byte, []int, int) (int, error) {
	<-d.done
	return 0, os.ErrClosed
}
func (discardDevice) Write(bufs [][]byte, _ int) (int, error) { return len(bufs), nil }
func (discardDevice) BatchSize() int                          { return 1 }

// startWireGuard runs the gateway's WireGuard server with a key kept in the
// data directory, and a registry that hands clients slots on it.
func startWireGuard(c *nodeConfig, cfg *server.Config, log *slog.Logger) (stop func(), pools []netip.Prefix, err error) {
	w := c.WireGuard
	p4, err := netip.ParsePrefix(w.Prefix4)
	if err != nil {
		return nil, nil, fmt.Errorf("wireguard prefix4: %w", err)
	}
	p6, err := netip.ParsePrefix(w.Prefix6)
	if err != nil {
		return nil, nil, fmt.Errorf("wireguard prefix6: %w", err)
	}
	key, err := link.LoadOrCreateKey(filepath.Join(c.DataDir, "wireguard.key"))
	if err != nil {
		return nil, nil, err
	}
	first := func(p netip.Prefix) netip.Prefix { return netip.PrefixFrom(p.Masked().Addr().Next(), p.Bits()) }
	srv, err := wgserver.Start(wgserver.Config{Name: w.device(), PrivateKey: key.Private, ListenPort: w.Port,
		Addrs: []netip.Prefix{first(p4), first(p6)}, Logger: log})
	if err != nil {
		return nil, nil, err
	}
	host, _, err := net.SplitHostPort(cmpOr(c.Advertise, c.Listen))
	if err != nil {
		srv.Close()
		return nil, nil, err
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		srv.Close()
		return nil, nil, fmt.Errorf("wireguard endpoint needs an IP address, not %q", host)
	}
	endpoint := netip.AddrPortFrom(ip, uint16(w.Port))
	// Registrations outlive the process, so that a restart (an upgrade,
	// a crash) does not strand the clients: their next handshake works.
	reg, err := gateway.NewRegistry(gateway.RegistryConfig{Peers: srv, Prefix4: p4, Prefix6: p6,
		ServerKey: key.Public, Endpoint: endpoint, Logger: log,
		Store: gateway.FileStore{Path: filepath.Join(c.DataDir, "registrations.json")}})
	if err != nil {
		srv.Close()
		return nil, nil, err
	}
	cfg.Registry = reg
	cfg.WireGuard = &directory.WireGuard{PublicKey: key.Public[:], Endpoint: endpoint.String()}
	return func() { srv.Close() }, []netip.Prefix{p4.Masked(), p6.Masked()}, nil
}

// exitEndpoints lists the WireGuard endpoints of the exits in doc.
func exitEndpoints(doc *directory.Document) []netip.AddrPort {
	var out []netip.AddrPort
	for _, n := range doc.NodesOf(directory.RoleExit, 0) {
		if n.WireGuard == nil {
			continue
		}
		if ap, err := netip.ParseAddrPort(n.WireGuard.Endpoint); err == nil {
			out = append(out, ap)
		}
	}
	return out
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// Environment variables that set run's tuning defaults. `mixnode devnet`
// passes its environment to every node it starts, so they reach a whole
// local network without new devnet flags.
const (
	envCPUProfileDir = "MIXNODE_CPUPROFILE"
	envSysmonSlack   = "MIXNODE_SYSMON_SLACK"
)

// defaultSysmonSlack is the timer slack given to the runtime's monitor
// thread; see runtimeTuning.SysmonSlack. Not more: the monitor is also
// what polls the network while a node's one P stays busy, so a long slack
// holds packets back (10 ms raised the anonymous round trip from 1.05-1.12
// to 1.30-1.38 times the model's; 1 ms kept it at 1.06 with the same
// goodput, `make bench-net`).
const defaultSysmonSlack = sysmon.DefaultSlack

// runtimeTuning is how `mixnode run` sets up the Go runtime around a node.
type runtimeTuning struct {
	// CPUProfile, if set, is a file, or a directory for ID.cpu.pprof, that
	// gets a CPU profile of the run.
	CPUProfile string
	// SysmonSlack is the timer slack of the runtime's sysmon thread. While
	// any goroutine runs, sysmon wakes every 20 µs (a 20 µs nanosleep, for
	// about the first millisecond after each wake-up from idle, and a node
	// wakes from idle for nearly every packet); on a paravirtualised
	// machine each of those wake-ups is a costly context switch, and they
	// measured a third of a mix's CPU (BenchmarkHop in mixnet/node). With
	// slack the kernel may defer each of those sleeps by up to this long.
	// Sysmon's duties tolerate it: it preempts goroutines that ran for
	// 10 ms and takes back a P from a goroutine blocked in a system call,
	// neither of which a node depends on to be quick.
	SysmonSlack time.Duration
}

// apply starts what t asks for; stop ends it (writing the profile).
func (t runtimeTuning) apply(id string, log *slog.Logger) (stop func(), err error) {
	if t.SysmonSlack > 0 {
		if err := sysmon.SetSlack(t.SysmonSlack); err != nil {
			log.Warn("sysmon timer slack not set", "err", err)
		}
	}
	if t.CPUProfile == "" {
		return func() {}, nil
	}
	path := t.CPUProfile
	if fi, err := os.Stat(path); err == nil && fi.IsDir() {
		path = filepath.Join(path, id+".cpu.pprof")
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("cpu profile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("cpu profile: %w", err)
	}
	log.Info("writing a CPU profile", "path", path)
	return func() {
		pprof.StopCPUProfile()
		if err := f.Close(); err != nil {
			log.Warn("cpu profile", "err", err)
		}
	}, nil
}

// envDuration reads a duration from the environment variable name, or
// returns def when it is unset or malformed.
func envDuration(name string, def time.Duration) time.Duration {
	if d, err := time.ParseDuration(os.Getenv(name)); err == nil {
		return d
	}
	return def
}
