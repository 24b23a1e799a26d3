package main

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"
)

// runRateTable is `mixnode devnet --bench-rates`: for each λ_P it connects
// the client daemon in Anonymous mode with that rate, downloads a blob and
// pings through the tunnel, and prints goodput, round trip and the CPU the
// client and the nodes used meanwhile, one key=value line per figure.
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
		before, t0 := sup.cpuTicks(), time.Now()
		out, err := cd.fetch(ctx, fmt.Sprintf("http://internet.mixvpn.test/blob/%d", size), "--kv", key)
		after, elapsed := sup.cpuTicks(), time.Since(t0)
		fmt.Print(out)
		if err != nil {
			return err
		}
		// CPU in percent of one core over the download: the client's
		// daemon, all nodes together, and the busiest node.
		pct := func(name string) float64 {
			return float64(after[name]-before[name]) / clockTicks / elapsed.Seconds() * 100
		}
		var nodes, busiest float64
		var busiestName string
		for name := range after {
			if name == "mixvpnd" || name == "directory" || name == "inet" || name == "iperf3" {
				continue
			}
			p := pct(name)
			nodes += p
			if p > busiest {
				busiest, busiestName = p, name
			}
		}
		fmt.Printf("%s_cpu_client_pct=%.0f\n%s_cpu_nodes_pct=%.0f\n%s_cpu_busiest_node_pct=%.0f\n%s_busiest_node=%s\n",
			key, pct("mixvpnd"), key, nodes, key, busiest, key, busiestName)
		ping, err := cd.host.Output("ping", "-q", "-c", "20", "-i", "0.2", "-W", "5", inet.String())
		if err != nil {
			return fmt.Errorf("ping through the anonymous tunnel: %w: %s", err, ping)
		}
		if i := strings.Index(ping, "= "); i >= 0 {
			if f := strings.Split(ping[i+2:], "/"); len(f) > 1 {
				fmt.Printf("%s_rtt_ms=%s\n", key, f[1])
			}
		}
	}
	_, err := cd.run(ctx, "disconnect")
	return err
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
