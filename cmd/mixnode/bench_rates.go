package main

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
)

// runRateTable is `mixnode devnet --bench-rates`: for each λ_P it connects
// the client daemon in Anonymous mode with that rate, measures the CPU of
// the idle connection, downloads a blob and pings through the tunnel, and
// prints goodput, round trip and the CPU the client and the nodes used,
// one key=value line per figure.
func runRateTable(ctx context.Context, cd *clientDaemon, sup *supervisor, inet netip.Addr, rates []int, size int) error {
	for _, rate := range rates {
		if _, err := cd.run(ctx, "settings", "set", fmt.Sprintf("mix_rate=%d", rate)); err != nil {
			return err
		}
		cd.run(ctx, "disconnect")
		if _, err := cd.run(ctx, "connect", "--mode", "anonymous"); err != nil {
			return err
		}
		key := fmt.Sprintf("rate_%d", rate)
		// What cover traffic and pacing cost with nothing to carry: the
		// client and all nodes while connected and idle, after the
		// connection has settled.
		if err := idleWait(ctx, idleSettle); err != nil {
			return err
		}
		idle0, i0 := sup.cpuTicks(), time.Now()
		if err := idleWait(ctx, idleWindow); err != nil {
			return err
		}
		idle1, idleFor := sup.cpuTicks(), time.Since(i0)
		var idleNodes float64
		for name := range idle1 {
			if !isNode(name) {
				continue
			}
			idleNodes += float64(idle1[name]-idle0[name]) / clockTicks / idleFor.Seconds() * 100
		}
		fmt.Printf("%s_idle_cpu_client_pct=%.0f\n%s_idle_cpu_nodes_pct=%.0f\n", key,
			float64(idle1["mixvpnd"]-idle0["mixvpnd"])/clockTicks/idleFor.Seconds()*100, key, idleNodes)
		before, t0 := sup.cpuTicks(), time.Now()
		out, err := cd.fetch(ctx, fmt.Sprintf("http://internet.mixvpn.test/blob/%d", size), "--kv", key)
		after, elapsed := sup.cpuTicks(), time.Since(t0)
		fmt.Print(out)
		if err != nil {
			return err
		}
		// CPU in percent of one core over the download: the client's
		// daemon, all nodes together, and the busiest node; then each
		// node, and CPU seconds per MiB downloaded, which depend less on
		// what else the machine is doing than goodput does.
		pct := func(name string) float64 {
			return float64(after[name]-before[name]) / clockTicks / elapsed.Seconds() * 100
		}
		var nodes, busiest float64
		var busiestName string
		var names []string
		for name := range after {
			if !isNode(name) {
				continue
			}
			names = append(names, name)
			p := pct(name)
			nodes += p
			if p > busiest {
				busiest, busiestName = p, name
			}
		}
		slices.Sort(names)
		mib := float64(size) / (1 << 20)
		perMiB := func(p float64) float64 { return p / 100 * elapsed.Seconds() / mib }
		fmt.Printf("%s_cpu_client_pct=%.0f\n%s_cpu_nodes_pct=%.0f\n%s_cpu_busiest_node_pct=%.0f\n%s_busiest_node=%s\n",
			key, pct("mixvpnd"), key, nodes, key, busiest, key, busiestName)
		for _, name := range names {
			fmt.Printf("%s_cpu_node_%s_pct=%.1f\n", key, name, pct(name))
		}
		fmt.Printf("%s_cpu_client_s_per_mib=%.2f\n%s_cpu_nodes_s_per_mib=%.2f\n%s_loadavg=%s\n",
			key, perMiB(pct("mixvpnd")), key, perMiB(nodes), key, loadAverage())
		if err := printPingRTT(cd, inet, key+"_rtt_ms"); err != nil {
			return err
		}
	}
	_, err := cd.run(ctx, "disconnect")
	return err
}

// idleSettle and idleWindow are how long runRateTable waits after
// connecting and then measures the connected, idle client.
const (
	idleSettle = 2 * time.Second
	idleWindow = 5 * time.Second
)

// idleWait waits for d or until ctx ends.
func idleWait(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// isNode tells the supervised processes that are mixnet nodes from the
// client daemon, the directory and the internet host's servers.
func isNode(name string) bool {
	switch name {
	case "mixvpnd", "directory", "inet", "iperf3":
		return false
	}
	return true
}

// loadAverage is the machine's 1-, 5- and 15-minute load averages, for
// telling a quiet run from one that shared the cores.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if f := strings.Fields(string(b)); err == nil && len(f) >= 3 {
		return strings.Join(f[:3], ",")
	}
	return "unknown"
}

// clockTicks is the kernel's USER_HZ, the unit of /proc/PID/stat times;
// 100 on every Linux architecture Go supports.
const clockTicks = 100

// cpuTicks reads the user and system time each supervised process has
// used so far, by the name it was started with.
func (s *supervisor) cpuTicks() map[string]uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	ticks := make(map[string]uint64, len(s.procs))
	for i, p := range s.procs {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.Process.Pid))
		if err != nil {
			continue
		}
		// Fields after the command name, which is in parentheses and
		// may hold spaces: utime and stime are the 12th and 13th.
		f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
		if len(f) < 13 {
			continue
		}
		u, _ := strconv.ParseUint(f[11], 10, 64)
		st, _ := strconv.ParseUint(f[12], 10, 64)
		ticks[s.names[i]] = u + st
	}
	return ticks
}

// parseRates reads a comma-separated list of packet rates.
func parseRates(s string) ([]int, error) {
	var rates []int
	for _, f := range strings.Split(s, ",") {
		r, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || r <= 0 {
			return nil, fmt.Errorf("bench-rates: %q is not a positive rate", f)
		}
		rates = append(rates, r)
	}
	return rates, nil
}
