// Command mixvpnd is the privileged mixvpn daemon: it owns the TUN device,
// the routes, DNS and firewall, runs Fast or Anonymous mode, and serves the
// control API on a Unix socket for the CLI and the desktop app.
package main

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.zx2c4.com/wireguard/tun"

	"github.com/mixvpn/mixvpn/platform/dns"
	"github.com/mixvpn/mixvpn/platform/firewall"
	"github.com/mixvpn/mixvpn/platform/router"
	"github.com/mixvpn/mixvpn/platform/sleep"
	"github.com/mixvpn/mixvpn/platform/sysmon"
	"github.com/mixvpn/mixvpn/tunnel/control"
	"github.com/mixvpn/mixvpn/tunnel/daemon"
	"github.com/mixvpn/mixvpn/tunnel/fast"
)

type options struct {
	tun, directory, directoryKey, socket, group string
	settings, systemSettings, resolvConf        string
	state, lockdownRuleset, resolvConfBackup    string
	debug                                       bool
	sysmonSlack                                 time.Duration
}

// Defaults of the daemon's files: its state lives in one directory
// (systemd's StateDirectory), and the state file, the boot ruleset and
// the backup of resolv.conf sit beside the settings unless placed
// elsewhere.
const (
	defaultSettings      = "/var/lib/mixvpn/settings.json"
	stateFileName        = "state.json"
	lockdownRulesetName  = "lockdown.nft"
	resolvConfBackupName = "resolv.conf.backup"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := command().ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "mixvpnd:", err)
		os.Exit(1)
	}
}

func command() *cobra.Command {
	var o options
	cmd := &cobra.Command{
		Use:           "mixvpnd",
		Short:         "The mixvpn daemon: owns the tunnel and serves the control API",
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       daemon.Version,
		RunE:          func(cmd *cobra.Command, _ []string) error { return run(cmd.Context(), o) },
	}
	f := cmd.Flags()
	f.StringVar(&o.tun, "tun", "mixvpn0", "name of the TUN device")
	f.StringVar(&o.directory, "directory", os.Getenv("MIXVPN_DIRECTORY"), "directory authority URL naming it by IP address, http(s)://IP[:port] (env MIXVPN_DIRECTORY)")
	f.StringVar(&o.directoryKey, "directory-key", os.Getenv("MIXVPN_DIRECTORY_KEY"), "the directory's base64 ed25519 key, pinned (env MIXVPN_DIRECTORY_KEY)")
	f.StringVar(&o.socket, "socket", control.DefaultSocketPath, "control socket")
	f.StringVar(&o.group, "group", control.DefaultGroup, "group allowed to use the control socket")
	f.StringVar(&o.settings, "settings", defaultSettings, "the daemon's settings file")
	f.StringVar(&o.state, "state", "", "where the daemon remembers whether it was connected, to come back so after a crash or restart (default "+stateFileName+" beside --settings)")
	f.StringVar(&o.lockdownRuleset, "lockdown-ruleset", "", "nft script written while lockdown is on, for mixvpn-lockdown.service to load at boot (default "+lockdownRulesetName+" beside --settings)")
	f.StringVar(&o.systemSettings, "system-settings", "/etc/mixvpn/settings.json", "settings preset by the administrator")
	f.StringVar(&o.resolvConf, "resolv-conf", "", "resolv.conf to manage when systemd-resolved is not running (default /etc/resolv.conf)")
	f.StringVar(&o.resolvConfBackup, "resolv-conf-backup", "", "where the original resolv.conf is kept while the tunnel's is in place, and found after a crash (default "+resolvConfBackupName+" beside --settings)")
	f.BoolVar(&o.debug, "debug", false, "debug logging")
	f.DurationVar(&o.sysmonSlack, "sysmon-slack", sysmon.DefaultSlack, "timer slack for the Go runtime's monitor thread (Linux), which otherwise wakes every 20 µs while the anonymous client runs; 0 leaves it alone")
	return cmd
}

func run(ctx context.Context, o options) error {
	level := slog.LevelInfo
	if o.debug {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	if os.Geteuid() != 0 {
		return errors.New("must run as root (it manages a TUN device, routes and the firewall)")
	}
	if o.sysmonSlack > 0 {
		if err := sysmon.SetSlack(o.sysmonSlack); errors.Is(err, fs.ErrPermission) {
			// Setting another thread's slack needs CAP_SYS_NICE, which
			// the shipped unit does not grant: a saving of CPU is not
			// worth a capability the daemon otherwise has no use for.
			log.Info("sysmon timer slack not set: it needs CAP_SYS_NICE", "err", err)
		} else if err != nil {
			log.Warn("sysmon timer slack not set", "err", err)
		}
	}
	if o.state == "" {
		o.state = filepath.Join(filepath.Dir(o.settings), stateFileName)
	}
	if o.lockdownRuleset == "" {
		o.lockdownRuleset = filepath.Join(filepath.Dir(o.settings), lockdownRulesetName)
	}
	if o.resolvConfBackup == "" {
		// The state directory, which the unit lets the daemon write and
		// which, unlike /run, outlives a reboot as resolv.conf does.
		o.resolvConfBackup = filepath.Join(filepath.Dir(o.settings), resolvConfBackupName)
	}
	key, err := base64.StdEncoding.DecodeString(o.directoryKey)
	if err != nil || len(key) != 32 {
		return errors.New("--directory-key must be the directory's base64 ed25519 public key")
	}
	dev, err := tun.CreateTUN(o.tun, fast.DefaultMTU)
	if err != nil {
		return fmt.Errorf("create TUN %s: %w", o.tun, err)
	}
	rt, err := router.New(router.Options{Logger: log})
	if err != nil {
		dev.Close()
		return err
	}
	dc, err := dns.New(dns.Options{Logger: log, ResolvConf: o.resolvConf, Backup: o.resolvConfBackup})
	if err != nil {
		dev.Close()
		return err
	}
	fw, err := firewall.New(firewall.Options{Logger: log})
	if err != nil {
		dev.Close()
		return err
	}
	mon, err := router.NewMonitor(router.MonitorOptions{Ignore: []string{o.tun}, Logger: log})
	if err != nil {
		dev.Close()
		return err
	}
	d, err := daemon.New(daemon.Config{
		Device: dev, DirectoryURL: o.directory, DirectoryKey: key,
		Settings: o.settings, SystemSettings: o.systemSettings,
		State: o.state, LockdownRuleset: o.lockdownRuleset,
		Router: rt, DNS: dc, Firewall: fw, Monitor: mon, Logger: log,
		// Resumes as logind announces them; without it the clocks still show sleeps.
		Sleep: sleep.New(sleep.Options{Logger: log}),
	})
	if err != nil {
		dev.Close()
		return err
	}
	ln, err := control.Listen(ctx, control.ListenConfig{Path: o.socket, Group: o.group, Logger: log})
	if err != nil {
		dev.Close()
		return err
	}
	srv, err := control.NewServer(control.Config{Daemon: d, Logger: log})
	if err != nil {
		dev.Close()
		return err
	}
	// The control API stops with the daemon, which may stop by itself
	// (dns.ErrNeedsRestart).
	serveCtx, stopServing := context.WithCancel(ctx)
	defer stopServing()
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(serveCtx, ln) }()
	log.Info("mixvpnd running", "tun", o.tun, "socket", o.socket, "directory", o.directory)
	err = d.Run(ctx)
	stopServing()
	if serr := <-errc; err == nil && serr != nil && !errors.Is(serr, context.Canceled) {
		err = serr
	}
	if errors.Is(err, dns.ErrNeedsRestart) {
		err = fmt.Errorf("exiting for systemd to start the daemon again (Restart=always), which reconnects if the tunnel was up; use systemd-resolved to avoid this: %w", err)
	}
	return err
}
