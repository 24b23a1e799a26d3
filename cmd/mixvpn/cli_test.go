package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mixvpn/mixvpn/tunnel/control"
)

var testGateways = []control.Gateway{
	{ID: "de-entry-1", Role: control.RoleEntry, Country: "DE", Endpoint: "192.0.2.1:51820", Health: control.HealthUp, Latency: 12 * time.Millisecond},
	{ID: "ch-exit-1", Role: control.RoleExit, Country: "CH", Endpoint: "192.0.2.2:51820", Health: control.HealthDegraded},
}

type daemonOptions struct {
	group  string
	mode   os.FileMode
	daemon func(*control.Fake) control.Daemon
}

// startDaemon serves a Fake on a socket in a fresh directory, for the
// test's own user unless opts say otherwise, and stops it at cleanup.
func startDaemon(t *testing.T, opts daemonOptions) (string, *control.Fake) {
	t.Helper()
	if opts.group == "" {
		g, err := user.LookupGroupId(strconv.Itoa(os.Getgid()))
		if err != nil {
			t.Fatalf("own group: %v", err)
		}
		opts.group = g.Name
	}
	path := filepath.Join(t.TempDir(), "d.sock")
	ctx, cancel := context.WithCancel(context.Background())
	l, err := control.Listen(ctx, control.ListenConfig{Path: path, Group: opts.group, Mode: opts.mode})
	if err != nil {
		cancel()
		t.Fatalf("Listen: %v", err)
	}
	fake := control.NewFake(control.FakeConfig{Gateways: testGateways})
	var d control.Daemon = fake
	if opts.daemon != nil {
		d = opts.daemon(fake)
	}
	srv, err := control.NewServer(control.Config{Daemon: d, Version: "v1.2.3-test"})
	if err != nil {
		cancel()
		t.Fatalf("NewServer: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, l) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Serve did not stop")
		}
	})
	return path, fake
}

type result struct {
	stdout, stderr string
	code           int
}

// mixvpn runs the CLI against the socket at path.
func mixvpn(t *testing.T, path string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var out, errOut bytes.Buffer
	code := run(ctx, append([]string{"--socket", path}, args...), &out, &errOut, func(string) string { return "" })
	return result{out.String(), errOut.String(), code}
}

func (r result) ok(t *testing.T) string {
	t.Helper()
	if r.code != 0 {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
	return r.stdout
}

func (r result) fails(t *testing.T, want string) {
	t.Helper()
	if r.code == 0 {
		t.Fatalf("succeeded with %q, want an error saying %q", r.stdout, want)
	}
	if !strings.Contains(r.stderr, want) {
		t.Fatalf("stderr %q does not say %q", r.stderr, want)
	}
}

func TestConnectStatusDisconnect(t *testing.T) {
	path, fake := startDaemon(t, daemonOptions{})

	out := mixvpn(t, path, "status").ok(t)
	if !strings.Contains(out, "State: disconnected") || !strings.Contains(out, "Mode:  fast") {
		t.Fatalf("status before connecting:\n%s", out)
	}

	out = mixvpn(t, path, "connect", "--mode", "anonymous", "--entry", "DE", "--exit", "ch-exit-1").ok(t)
	if want := "Connected in anonymous mode: entry de-entry-1, exit ch-exit-1\n"; out != want {
		t.Fatalf("connect said %q, want %q", out, want)
	}
	if st := fake.Status(); st.State != control.StateConnected || st.Mode != control.ModeAnonymous {
		t.Fatalf("daemon status %+v", st)
	}

	out = mixvpn(t, path, "status").ok(t)
	for _, want := range []string{"State: connected for ", "Mode:  anonymous", "Entry: de-entry-1", "Exit:  ch-exit-1"} {
		if !strings.Contains(out, want) {
			t.Fatalf("status does not say %q:\n%s", want, out)
		}
	}

	var st statusView
	if err := json.Unmarshal([]byte(mixvpn(t, path, "status", "--json").ok(t)), &st); err != nil {
		t.Fatalf("status --json: %v", err)
	}
	if st.State != "connected" || st.Mode != "anonymous" || st.Entry != "de-entry-1" || st.Exit != "ch-exit-1" || st.Since == "" || st.DaemonVersion != "v1.2.3-test" {
		t.Fatalf("status --json: %+v", st)
	}

	if out := mixvpn(t, path, "disconnect").ok(t); out != "Disconnected\n" {
		t.Fatalf("disconnect said %q", out)
	}
	if st := fake.Status(); st.State != control.StateDisconnected {
		t.Fatalf("daemon state after disconnect: %v", st.State)
	}
	// Disconnecting again has nothing to wait for.
	mixvpn(t, path, "disconnect").ok(t)
}

func TestConnectRejected(t *testing.T) {
	path, fake := startDaemon(t, daemonOptions{})
	mixvpn(t, path, "connect", "--exit", "Ch").fails(t, `mixvpn: exit "Ch": write country codes in capitals, e.g. "CH"`)
	mixvpn(t, path, "connect", "--entry", "no_such gateway").fails(t, "is neither a gateway ID")
	mixvpn(t, path, "connect", "--exit", "FR").fails(t, `no exit gateway "FR"`)
	mixvpn(t, path, "connect", "--mode", "stealth").fails(t, `unknown mode "stealth": want fast or anonymous`)
	if st := fake.Status(); st.State != control.StateDisconnected {
		t.Fatalf("a rejected connect changed the state to %v", st.State)
	}
}

// failingDaemon fails every connection, as an unreachable entry would.
type failingDaemon struct{ *control.Fake }

func (d failingDaemon) Connect(context.Context, control.Mode, string, string) error {
	d.Fail("entry de-entry-1 did not answer the handshake")
	return nil
}

func TestConnectReportsDaemonError(t *testing.T) {
	path, _ := startDaemon(t, daemonOptions{daemon: func(f *control.Fake) control.Daemon { return failingDaemon{f} }})
	mixvpn(t, path, "connect").fails(t, "mixvpn: mixvpnd: entry de-entry-1 did not answer the handshake")
	out := mixvpn(t, path, "status").ok(t)
	if !strings.Contains(out, "Error: entry de-entry-1 did not answer the handshake") {
		t.Fatalf("status after a failed connect:\n%s", out)
	}
}

func TestMode(t *testing.T) {
	path, fake := startDaemon(t, daemonOptions{})
	// Disconnected, the mode is kept for the next connect.
	if out := mixvpn(t, path, "mode", "anonymous").ok(t); out != "Mode set to anonymous for the next connect\n" {
		t.Fatalf("mode said %q", out)
	}
	if m := fake.Settings().Mode; m != control.ModeAnonymous {
		t.Fatalf("daemon mode %v", m)
	}
	mixvpn(t, path, "mode", "slow").fails(t, `unknown mode "slow"`)
	mixvpn(t, path, "mode").fails(t, "accepts 1 arg")

	// Connected, it waits for the tunnel in the new mode.
	mixvpn(t, path, "connect").ok(t)
	if out := mixvpn(t, path, "mode", "fast").ok(t); out != "Switched to fast mode: entry de-entry-1, exit ch-exit-1\n" {
		t.Fatalf("mode said %q", out)
	}
	if st := fake.Status(); st.State != control.StateConnected || st.Mode != control.ModeFast {
		t.Fatalf("daemon status %+v", st)
	}
	if out := mixvpn(t, path, "mode", "fast").ok(t); out != "Already connected in fast mode: entry de-entry-1, exit ch-exit-1\n" {
		t.Fatalf("mode again said %q", out)
	}
}

// slowDaemon never finishes switching modes; failSwitch fails to.
type slowDaemon struct{ *control.Fake }

func (d slowDaemon) SetMode(context.Context, control.Mode) error {
	d.Reconnecting("entry de-entry-1 did not answer")
	return nil
}

type failSwitch struct{ *control.Fake }

func (d failSwitch) SetMode(ctx context.Context, mode control.Mode) error {
	d.Fake.SetMode(ctx, mode)
	d.Fail("exit ch-exit-1 refused the session")
	return nil
}

func TestModeWaitFails(t *testing.T) {
	path, fake := startDaemon(t, daemonOptions{daemon: func(f *control.Fake) control.Daemon { return slowDaemon{f} }})
	if err := fake.Connect(context.Background(), control.ModeFast, "", ""); err != nil {
		t.Fatal(err)
	}
	mixvpn(t, path, "mode", "anonymous", "--timeout", "300ms").fails(t,
		"mixvpn: still reconnecting (entry de-entry-1 did not answer) after 300ms: see `mixvpn status --watch`")

	path, fake = startDaemon(t, daemonOptions{daemon: func(f *control.Fake) control.Daemon { return failSwitch{f} }})
	if err := fake.Connect(context.Background(), control.ModeFast, "", ""); err != nil {
		t.Fatal(err)
	}
	mixvpn(t, path, "mode", "anonymous").fails(t, "mixvpn: mixvpnd: exit ch-exit-1 refused the session")
	// After the failure the daemon is in error, not connected: the mode
	// is kept for the next connect, and the old error is not news.
	if out := mixvpn(t, path, "mode", "fast").ok(t); out != "Mode set to fast for the next connect\n" {
		t.Fatalf("mode after an error said %q", out)
	}
}

func TestStatusReconnecting(t *testing.T) {
	path, fake := startDaemon(t, daemonOptions{})
	if err := fake.Connect(context.Background(), control.ModeFast, "", ""); err != nil {
		t.Fatal(err)
	}
	fake.Reconnecting("network changed: eth0 went down")
	out := mixvpn(t, path, "status").ok(t)
	for _, want := range []string{"State: reconnecting for ", "Why:   network changed: eth0 went down", "Mode:  fast"} {
		if !strings.Contains(out, want) {
			t.Fatalf("status does not say %q:\n%s", want, out)
		}
	}
	if got := statusLine(fake.Status()); got != "reconnecting (fast): network changed: eth0 went down" {
		t.Fatalf("watch line %q", got)
	}
}

func TestStats(t *testing.T) {
	path, fake := startDaemon(t, daemonOptions{})
	out := mixvpn(t, path, "stats", "--interval", "100ms").ok(t)
	if out != "Not connected: there is no tunnel to count.\n" {
		t.Fatalf("stats while disconnected:\n%s", out)
	}

	fake.SetStats(control.Stats{
		Mode: control.ModeAnonymous, BytesIn: 3 << 20, BytesOut: 1536, Latency: 112 * time.Millisecond,
		LoopRTTP50: 100 * time.Millisecond, LoopRTTP90: 180 * time.Millisecond,
		RealPackets: 250, CoverPackets: 750, LoopsSent: 300, LoopsReturned: 298, LoopsLost: 2,
		SURBsMade: 500, SURBsUsed: 420, SURBStock: 80,
	})
	out = mixvpn(t, path, "stats", "--interval", "100ms").ok(t)
	for _, want := range []string{
		"Mode:       anonymous", "Received:   3.0 MiB (0 B/s)", "Sent:       1.5 KiB (0 B/s)",
		"Round trip: 112ms mean, 100ms median, 180ms p90",
		"Packets:    250 real, 750 cover (75% cover)", "Loops:      300 sent, 298 returned, 2 lost",
		"SURBs:      500 sent, 420 used, about 80 in stock at the exit",
	} {
		if !strings.Contains(out, want) {
			t.Fatalf("stats do not say %q:\n%s", want, out)
		}
	}

	var v statsJSON
	if err := json.Unmarshal([]byte(mixvpn(t, path, "stats", "--json", "--interval", "100ms").ok(t)), &v); err != nil {
		t.Fatalf("stats --json: %v", err)
	}
	if v.Mode != "anonymous" || v.BytesIn != 3<<20 || v.BytesInPerS == nil || *v.BytesInPerS != 0 || v.LatencyMs == nil || *v.LatencyMs != 112 ||
		v.SURBsInStock != 80 || v.LoopsLost != 2 || v.CoverPackets != 750 || v.LoopRTTP90Ms == nil || *v.LoopRTTP90Ms != 180 {
		t.Fatalf("stats --json: %+v", v)
	}

	hs := time.Now().Add(-42 * time.Second)
	fake.SetStats(control.Stats{Mode: control.ModeFast, BytesIn: 2048, LastHandshake: hs})
	out = mixvpn(t, path, "stats", "--interval", "100ms").ok(t)
	if !strings.Contains(out, "Mode:      fast") || !strings.Contains(out, "Handshake: 4") || strings.Contains(out, "SURBs") {
		t.Fatalf("fast stats:\n%s", out)
	}
	mixvpn(t, path, "stats", "--interval", "1ms").fails(t, "interval_ms 1 is out of range")
}

func TestStatsWatch(t *testing.T) {
	path, fake := startDaemon(t, daemonOptions{})
	fake.SetStats(control.Stats{Mode: control.ModeAnonymous, BytesIn: 1000, Latency: 90 * time.Millisecond, RealPackets: 1, CoverPackets: 3, SURBStock: 7})
	for _, asJSON := range []bool{false, true} {
		ctx, cancel := context.WithCancel(context.Background())
		out := &lineWriter{more: make(chan struct{}, 1)}
		args := []string{"--socket", path, "stats", "--watch", "--interval", "100ms"}
		if asJSON {
			args = append(args, "--json")
		}
		done := make(chan int, 1)
		var errOut bytes.Buffer
		go func() { done <- run(ctx, args, out, &errOut, func(string) string { return "" }) }()
		if asJSON {
			out.waitFor(t, `"mode":"anonymous","bytes_in":1000,"bytes_out":0,"latency_ms":90`)
			out.waitFor(t, `"bytes_in_per_s":0`)
		} else {
			out.waitFor(t, "anonymous  in -  out -  rtt 90ms  cover 75%  loops lost 0  surbs ~7")
			out.waitFor(t, "anonymous  in 0 B/s  out 0 B/s")
		}
		cancel()
		select {
		case code := <-done:
			if code != 0 {
				t.Fatalf("stats --watch exited %d: %s", code, errOut.String())
			}
		case <-time.After(10 * time.Second):
			t.Fatal("stats --watch did not stop when cancelled")
		}
	}
}

func TestGateways(t *testing.T) {
	path, _ := startDaemon(t, daemonOptions{})
	out := mixvpn(t, path, "gateways").ok(t)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 {
		t.Fatalf("gateways:\n%s", out)
	}
	for i, want := range [][]string{
		{"ID", "ROLE", "COUNTRY", "ENDPOINT", "HEALTH", "LATENCY"},
		{"de-entry-1", "entry", "DE", "192.0.2.1:51820", "up", "12ms"},
		{"ch-exit-1", "exit", "CH", "192.0.2.2:51820", "degraded", "-"},
	} {
		if got := strings.Fields(lines[i]); strings.Join(got, " ") != strings.Join(want, " ") {
			t.Errorf("line %d: %q, want %q", i, got, want)
		}
	}

	var gws []gatewayJSON
	if err := json.Unmarshal([]byte(mixvpn(t, path, "gateways", "--json").ok(t)), &gws); err != nil {
		t.Fatalf("gateways --json: %v", err)
	}
	if len(gws) != 2 || gws[0].ID != "de-entry-1" || gws[0].Role != "entry" || gws[0].LatencyMs == nil || *gws[0].LatencyMs != 12 || gws[1].LatencyMs != nil {
		t.Fatalf("gateways --json: %+v", gws)
	}
}

func TestSettings(t *testing.T) {
	path, fake := startDaemon(t, daemonOptions{})
	out := mixvpn(t, path, "settings", "get").ok(t)
	for _, want := range []string{"kill_switch    true", "dns_servers    10.64.0.1", "exit           any", "mode           fast", "mix_rate       200", "mean_delay_ms  15"} {
		if !strings.Contains(out, want) {
			t.Fatalf("settings get does not say %q:\n%s", want, out)
		}
	}

	out = mixvpn(t, path, "settings", "set", "mix_rate=300", "kill-switch=false", "dns=9.9.9.9,149.112.112.112", "exit=CH", "mode=anonymous").ok(t)
	if !strings.Contains(out, "mix_rate       300") || !strings.Contains(out, "exit           CH") {
		t.Fatalf("settings set printed:\n%s", out)
	}
	s := fake.Settings()
	if s.MixRate != 300 || s.KillSwitch || len(s.DNSServers) != 2 || s.Exit != "CH" || s.Mode != control.ModeAnonymous || s.LoopRate != 10 {
		t.Fatalf("daemon settings %+v", s)
	}

	var v settingsView
	if err := json.Unmarshal([]byte(mixvpn(t, path, "settings", "get", "--json").ok(t)), &v); err != nil {
		t.Fatalf("settings get --json: %v", err)
	}
	if v.MixRate != 300 || v.KillSwitch || v.Mode != "anonymous" || v.MeanDelayMs != 15 || strings.Join(v.DNSServers, ",") != "9.9.9.9,149.112.112.112" {
		t.Fatalf("settings get --json: %+v", v)
	}

	// Values the daemon rejects come back with its message.
	mixvpn(t, path, "settings", "set", "mix_rate=100000").fails(t, "mixvpn: mix_rate 100000 is out of range: want 1 to 5000 packets/s")
	mixvpn(t, path, "settings", "set", "dns_servers=1.2.3.999").fails(t, `dns_servers: "1.2.3.999" is not an IP address`)
	mixvpn(t, path, "settings", "set", "mean_delay_ms=0").fails(t, "mean_delay_ms 0 is out of range")
	// Syntax is checked before asking.
	mixvpn(t, path, "settings", "set", "kill_switch=maybe").fails(t, `kill_switch="maybe": want true or false`)
	mixvpn(t, path, "settings", "set", "colour=red").fails(t, `unknown setting "colour"`)
	mixvpn(t, path, "settings", "set", "mix_rate").fails(t, `"mix_rate" is not key=value`)
	if got := fake.Settings(); got.MixRate != 300 || got.MeanDelay != 15*time.Millisecond {
		t.Fatalf("rejected changes were applied: %+v", got)
	}
}

// lineWriter collects output and tells when it has a line containing some
// text, for a command that runs until cancelled.
type lineWriter struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	more chan struct{}
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	n, err := w.buf.Write(p)
	select {
	case w.more <- struct{}{}:
	default:
	}
	return n, err
}

func (w *lineWriter) waitFor(t *testing.T, want string) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		w.mu.Lock()
		got := w.buf.String()
		w.mu.Unlock()
		if strings.Contains(got, want) {
			return
		}
		select {
		case <-w.more:
		case <-deadline:
			t.Fatalf("output never said %q:\n%s", want, got)
		}
	}
}

func TestStatusWatch(t *testing.T) {
	path, fake := startDaemon(t, daemonOptions{})
	for _, asJSON := range []bool{false, true} {
		ctx, cancel := context.WithCancel(context.Background())
		out := &lineWriter{more: make(chan struct{}, 1)}
		args := []string{"--socket", path, "status", "--watch"}
		if asJSON {
			args = append(args, "--json")
		}
		done := make(chan int, 1)
		var errOut bytes.Buffer
		go func() { done <- run(ctx, args, out, &errOut, func(string) string { return "" }) }()
		if asJSON {
			out.waitFor(t, `"state":"disconnected"`)
		} else {
			out.waitFor(t, "disconnected (fast)")
		}
		if err := fake.Connect(ctx, control.ModeFast, "", ""); err != nil {
			t.Fatal(err)
		}
		if asJSON {
			out.waitFor(t, `{"state":"connected","mode":"fast","entry":"de-entry-1","exit":"ch-exit-1"`)
		} else {
			out.waitFor(t, "connecting (fast)")
			out.waitFor(t, "connected (fast): entry de-entry-1, exit ch-exit-1")
		}
		cancel()
		select {
		case code := <-done:
			if code != 0 {
				t.Fatalf("status --watch exited %d: %s", code, errOut.String())
			}
		case <-time.After(10 * time.Second):
			t.Fatal("status --watch did not stop when cancelled")
		}
		if err := fake.Disconnect(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
}

func TestDaemonNotRunning(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing.sock")
	mixvpn(t, missing, "status").fails(t, "mixvpn: mixvpnd is not running: start it with `sudo systemctl start mixvpnd`")

	// A daemon that died leaves its socket behind: connection refused.
	stale := filepath.Join(dir, "stale.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: stale, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	l.Close()
	mixvpn(t, stale, "connect").fails(t, "mixvpnd is not running: start it with `sudo systemctl start mixvpnd`")

	out := mixvpn(t, missing, "version").ok(t)
	if !strings.HasPrefix(out, "mixvpn  ") || !strings.Contains(out, "mixvpnd unknown: mixvpnd is not running") {
		t.Fatalf("version without a daemon:\n%s", out)
	}
}

func TestSocketFromEnvironment(t *testing.T) {
	path, _ := startDaemon(t, daemonOptions{})
	var out, errOut bytes.Buffer
	getenv := func(k string) string {
		if k == socketEnv {
			return path
		}
		return ""
	}
	if code := run(context.Background(), []string{"version"}, &out, &errOut, getenv); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	if !strings.Contains(out.String(), "mixvpnd v1.2.3-test") {
		t.Fatalf("version:\n%s", out.String())
	}
}
