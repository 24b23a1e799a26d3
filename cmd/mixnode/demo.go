package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// clientDaemon runs mixvpnd in the local network's client namespace, as a
// user's machine would, and drives it with the mixvpn CLI.
type clientDaemon struct {
	host   host
	cli    string
	socket string
	dns    netip.Addr
	self   string
}

// startClientDaemon starts mixvpnd in h with its socket, settings and
// resolv.conf in runDir, pointed at the local network's directory.
func startClientDaemon(ctx context.Context, sup *supervisor, h host, self, runDir, dirURL, pub string, dnsServer netip.Addr) (*clientDaemon, error) {
	bin := filepath.Dir(self)
	cd := &clientDaemon{host: h, cli: filepath.Join(bin, "mixvpn"), socket: filepath.Join(runDir, "mixvpnd.sock"), dns: dnsServer, self: self}
	settings := filepath.Join(runDir, "client-settings.json")
	preset := fmt.Sprintf(`{"dns_servers": [%q], "kill_switch": true, "mode": "fast"}`, dnsServer)
	if err := os.WriteFile(settings, []byte(preset), 0o644); err != nil {
		return nil, err
	}
	resolv := filepath.Join(runDir, "client-resolv.conf")
	if err := os.WriteFile(resolv, []byte("nameserver 192.0.2.53\n"), 0o644); err != nil {
		return nil, err
	}
	cmd := h.Command(ctx, filepath.Join(bin, "mixvpnd"), "--tun", "mvpn0", "--directory", dirURL, "--directory-key", pub,
		"--socket", cd.socket, "--settings", settings, "--system-settings", filepath.Join(runDir, "no-system-settings.json"),
		"--resolv-conf", resolv)
	if err := sup.start("mixvpnd", cmd); err != nil {
		return nil, err
	}
	wctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if err := waitFor(wctx, "mixvpnd's control socket", func() error {
		_, err := cd.run(ctx, "status")
		return err
	}); err != nil {
		return nil, err
	}
	return cd, nil
}

// run runs the CLI and returns its output.
func (cd *clientDaemon) run(ctx context.Context, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, cd.cli, append([]string{"--socket", cd.socket}, args...)...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("mixvpn %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// fetch downloads url in the client namespace through whatever the daemon
// routes it through.
func (cd *clientDaemon) fetch(ctx context.Context, url string, extra ...string) (string, error) {
	args := append([]string{"fetch", "--dns", cd.dns.String()}, extra...)
	out, err := cd.host.Output(cd.self, append(args, url)...)
	if err != nil {
		return out, fmt.Errorf("fetch %s: %w: %s", url, err, out)
	}
	return out, nil
}

// runClientDemo is `make demo`: Fast mode, a page, Anonymous mode, the
// page again, the state and the tunnel's stats after each fetch, and a
// clean disconnect. connect and mode return once the tunnel is up.
func runClientDemo(ctx context.Context, cd *clientDaemon) error {
	say := func(format string, a ...any) { fmt.Printf("\n== "+format+"\n", a...) }
	show := func(args ...string) error {
		out, err := cd.run(ctx, args...)
		fmt.Print(out)
		return err
	}
	page := "http://internet.mixvpn.test/blob/262144"
	say("mixvpn gateways")
	if err := show("gateways"); err != nil {
		return err
	}
	say("mixvpn connect --mode fast")
	if err := show("connect", "--mode", "fast"); err != nil {
		return err
	}
	if err := show("status"); err != nil {
		return err
	}
	say("fetch a page through Fast mode (two WireGuard hops)")
	out, err := cd.fetch(ctx, page)
	fmt.Print(out)
	if err != nil {
		return err
	}
	say("mixvpn stats (Fast mode)")
	if err := show("stats"); err != nil {
		return err
	}
	say("mixvpn mode anonymous (live switch)")
	if err := show("mode", "anonymous"); err != nil {
		return err
	}
	if err := show("status"); err != nil {
		return err
	}
	say("fetch the page again through Anonymous mode (5-hop mixnet, cover traffic on)")
	out, err = cd.fetch(ctx, page)
	fmt.Print(out)
	if err != nil {
		return err
	}
	say("mixvpn stats (Anonymous mode: loops, cover traffic, reply blocks)")
	if err := show("stats"); err != nil {
		return err
	}
	say("mixvpn status --json")
	if err := show("status", "--json"); err != nil {
		return err
	}
	say("mixvpn disconnect")
	return show("disconnect")
}

// runClientBench is the tunnel half of `make bench-net`: connect time and
// goodput in Fast mode, goodput and round trip in Anonymous mode, and the
// model's round trip for the same settings, as key=value lines.
func runClientBench(ctx context.Context, cd *clientDaemon, inet netip.Addr) error {
	if err := benchWG1Hop(ctx, cd, inet); err != nil {
		return err
	}
	start := time.Now()
	if _, err := cd.run(ctx, "connect", "--mode", "fast"); err != nil {
		return err
	}
	fmt.Printf("fast_connect_ms=%d\n", time.Since(start).Milliseconds())
	out, err := cd.fetch(ctx, "http://internet.mixvpn.test/blob/67108864", "--kv", "fast")
	fmt.Print(out)
	if err != nil {
		return err
	}
	if _, err := cd.run(ctx, "mode", "anonymous"); err != nil {
		return err
	}
	// 16 MiB, as the rate table: long enough that TCP's start is a small part of the time.
	out, err = cd.fetch(ctx, "http://internet.mixvpn.test/blob/16777216", "--kv", "anon")
	fmt.Print(out)
	if err != nil {
		return err
	}
	if err := printPingRTT(cd, inet, "anon_rtt_ms"); err != nil {
		return err
	}
	out, err = cd.run(ctx, "settings", "get", "--json")
	if err != nil {
		return err
	}
	var s struct {
		MixRate     float64 `json:"mix_rate"`
		LoopRate    float64 `json:"loop_rate"`
		MeanDelayMS float64 `json:"mean_delay_ms"`
	}
	if err := json.Unmarshal([]byte(out), &s); err != nil || s.MixRate <= 0 {
		return fmt.Errorf("settings: %v: %s", err, out)
	}
	// The model: the mean wait for the next send slot of the Poisson
	// stream plus six exponential delays (three mixes each way).
	fmt.Printf("anon_model_rtt_ms=%.1f\n", 1000/(s.MixRate+s.LoopRate)+6*s.MeanDelayMS)
	_, err = cd.run(ctx, "disconnect")
	return err
}

// pingCount is how many pings measure a round trip. Six exponential
// delays of 15 ms vary by 37 ms (one standard deviation), so the mean of
// 100 is good to about 4 ms; of 30, only to 7.
const pingCount = 100

// printPingRTT pings inet through the anonymous tunnel, each ping waiting
// for a Poisson slot and crossing three mixes each way, and prints the
// mean round trip as key=ms.
func printPingRTT(cd *clientDaemon, inet netip.Addr, key string) error {
	ping, err := cd.host.Output("ping", "-q", "-c", strconv.Itoa(pingCount), "-i", "0.1", "-W", "5", inet.String())
	if err != nil {
		return fmt.Errorf("ping through the anonymous tunnel: %w: %s", err, ping)
	}
	// The summary line: rtt min/avg/max/mdev = a/b/c/d ms.
	i := strings.Index(ping, "= ")
	if i < 0 {
		return fmt.Errorf("ping: no summary in %q", ping)
	}
	f := strings.Split(ping[i+2:], "/")
	if len(f) < 2 {
		return fmt.Errorf("ping: no mean in %q", ping)
	}
	fmt.Printf("%s=%s\n", key, f[1])
	return nil
}
