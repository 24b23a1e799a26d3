package control

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"math"
	"net"
	"net/netip"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/mixvpn/mixvpn/tunnel/control/controlpb"
)

var testGateways = []Gateway{
	{ID: "de-entry-1", Role: RoleEntry, Country: "DE", Endpoint: "192.0.2.1:51820", Health: HealthUp, Latency: 12 * time.Millisecond},
	{ID: "ch-exit-1", Role: RoleExit, Country: "CH", Endpoint: "192.0.2.2:51820", Health: HealthDegraded, Latency: 40 * time.Millisecond},
}

// ownGroup is the test process's primary group, so the server admits the
// test whether or not it runs as root.
func ownGroup(t *testing.T) string {
	t.Helper()
	g, err := user.LookupGroupId(strconv.Itoa(os.Getgid()))
	if err != nil {
		t.Fatalf("own group: %v", err)
	}
	return g.Name
}

type testServer struct {
	fake   *Fake
	path   string
	client pb.ControlClient
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
}

// startServer serves a Fake on a socket in a fresh directory and stops it
// at cleanup.
func startServer(t *testing.T, lc ListenConfig) *testServer {
	t.Helper()
	if lc.Path == "" {
		lc.Path = filepath.Join(t.TempDir(), "run", "d.sock")
	}
	if lc.Group == "" {
		lc.Group = ownGroup(t)
	}
	ctx, cancel := context.WithCancel(context.Background())
	l, err := Listen(ctx, lc)
	if err != nil {
		cancel()
		t.Fatalf("Listen: %v", err)
	}
	ts := &testServer{fake: NewFake(FakeConfig{Gateways: testGateways}), path: lc.Path, cancel: cancel, done: make(chan error, 1)}
	srv, err := NewServer(Config{Daemon: ts.fake, Version: "v9.9.9"})
	if err != nil {
		t.Fatalf("NewServer: %v", err)
	}
	go func() { ts.done <- srv.Serve(ctx, l) }()
	client, cc, err := Dial(lc.Path)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	ts.client = client
	t.Cleanup(func() {
		cc.Close()
		ts.stop(t)
	})
	return ts
}

// stop stops the server once and checks Serve returned cleanly.
func (ts *testServer) stop(t *testing.T) {
	t.Helper()
	ts.once.Do(func() {
		ts.cancel()
		select {
		case err := <-ts.done:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Serve did not return after cancel")
		}
	})
}

func callCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestServerRoundTrip(t *testing.T) {
	ts := startServer(t, ListenConfig{})
	ctx := callCtx(t)

	st, err := ts.client.GetStatus(ctx, &pb.GetStatusRequest{})
	if err != nil {
		t.Fatalf("GetStatus: %v", err)
	}
	if st.State != pb.State_STATE_DISCONNECTED || st.DaemonVersion != "v9.9.9" {
		t.Fatalf("status %v, want disconnected and version v9.9.9", st)
	}

	if _, err := ts.client.Connect(ctx, &pb.ConnectRequest{Mode: pb.Mode_MODE_ANONYMOUS, Entry: "DE", Exit: "ch-exit-1"}); err != nil {
		t.Fatalf("Connect: %v", err)
	}
	st, err = ts.client.GetStatus(ctx, &pb.GetStatusRequest{})
	if err != nil {
		t.Fatalf("GetStatus: %v", err)
	}
	got := StatusFromProto(st)
	if got.State != StateConnected || got.Mode != ModeAnonymous || got.Entry != "de-entry-1" || got.Exit != "ch-exit-1" || got.Since.IsZero() {
		t.Fatalf("after Connect status %+v", got)
	}

	if _, err := ts.client.SetMode(ctx, &pb.SetModeRequest{Mode: pb.Mode_MODE_FAST}); err != nil {
		t.Fatalf("SetMode: %v", err)
	}
	if s := ts.fake.Status(); s.Mode != ModeFast || s.State != StateConnected {
		t.Fatalf("after SetMode status %+v", s)
	}

	gws, err := ts.client.ListGateways(ctx, &pb.ListGatewaysRequest{})
	if err != nil {
		t.Fatalf("ListGateways: %v", err)
	}
	if len(gws.Gateways) != 2 {
		t.Fatalf("%d gateways, want 2", len(gws.Gateways))
	}
	for i, g := range gws.Gateways {
		if got := GatewayFromProto(g); got != testGateways[i] {
			t.Errorf("gateway %d = %+v, want %+v", i, got, testGateways[i])
		}
	}

	if _, err := ts.client.Disconnect(ctx, &pb.DisconnectRequest{}); err != nil {
		t.Fatalf("Disconnect: %v", err)
	}
	if s := ts.fake.Status(); s.State != StateDisconnected {
		t.Fatalf("after Disconnect state %v", s.State)
	}
}

func TestServerDaemonErrorCodes(t *testing.T) {
	ts := startServer(t, ListenConfig{})
	ctx := callCtx(t)
	_, err := ts.client.Connect(ctx, &pb.ConnectRequest{Exit: "FR"})
	if status.Code(err) != codes.NotFound || !strings.Contains(status.Convert(err).Message(), `no exit gateway "FR"`) {
		t.Fatalf("Connect to a country with no exit: %v, want NotFound naming FR", err)
	}
	srv := &service{srv: &Server{log: slog.New(slog.DiscardHandler)}}
	for _, c := range []struct {
		err  error
		code codes.Code
	}{
		{ErrState, codes.FailedPrecondition},
		{context.DeadlineExceeded, codes.DeadlineExceeded},
		{errors.New("tun: device busy"), codes.Internal},
		{status.Error(codes.Aborted, "x"), codes.Aborted},
	} {
		if got := status.Code(srv.grpcError("M", c.err)); got != c.code {
			t.Errorf("grpcError(%v) code %v, want %v", c.err, got, c.code)
		}
	}
}

func TestServerValidation(t *testing.T) {
	ts := startServer(t, ListenConfig{})
	ctx := callCtx(t)
	good := SettingsToProto(ts.fake.Settings())
	with := func(f func(s *pb.Settings)) *pb.SetSettingsRequest {
		s := SettingsToProto(ts.fake.Settings())
		f(s)
		return &pb.SetSettingsRequest{Settings: s}
	}
	cases := []struct {
		name string
		call func() error
		want string
	}{
		{"unknown connect mode", func() error {
			_, err := ts.client.Connect(ctx, &pb.ConnectRequest{Mode: 7})
			return err
		}, "mode 7 is unknown"},
		{"lower-case country", func() error {
			_, err := ts.client.Connect(ctx, &pb.ConnectRequest{Entry: "de"})
			return notFoundIsOK(err)
		}, ""},
		{"mixed-case country", func() error {
			_, err := ts.client.Connect(ctx, &pb.ConnectRequest{Exit: "Ch"})
			return err
		}, `write country codes in capitals, e.g. "CH"`},
		{"bad entry characters", func() error {
			_, err := ts.client.Connect(ctx, &pb.ConnectRequest{Entry: "de_entry 1"})
			return err
		}, "neither a gateway ID"},
		{"entry too long", func() error {
			_, err := ts.client.Connect(ctx, &pb.ConnectRequest{Entry: strings.Repeat("a", 65)})
			return err
		}, "at most 64"},
		{"same entry and exit", func() error {
			_, err := ts.client.Connect(ctx, &pb.ConnectRequest{Entry: "gw-1", Exit: "gw-1"})
			return err
		}, "one gateway must not see both ends"},
		{"set mode unspecified", func() error {
			_, err := ts.client.SetMode(ctx, &pb.SetModeRequest{})
			return err
		}, "mode is missing"},
		{"bad dns", func() error {
			_, err := ts.client.SetSettings(ctx, with(func(s *pb.Settings) { s.DnsServers = []string{"1.2.3.999"} }))
			return err
		}, `dns_servers: "1.2.3.999" is not an IP address`},
		{"multicast dns", func() error {
			_, err := ts.client.SetSettings(ctx, with(func(s *pb.Settings) { s.DnsServers = []string{"224.0.0.1"} }))
			return err
		}, "cannot be a resolver"},
		{"ipv6 dns without ipv6", func() error {
			_, err := ts.client.SetSettings(ctx, with(func(s *pb.Settings) { s.DnsServers = []string{"2001:db8::53"}; s.Ipv6 = false }))
			return err
		}, "ipv6 is off"},
		{"too many dns", func() error {
			_, err := ts.client.SetSettings(ctx, with(func(s *pb.Settings) { s.DnsServers = make([]string, 9) }))
			return err
		}, "at most 8"},
		{"mix rate too high", func() error {
			_, err := ts.client.SetSettings(ctx, with(func(s *pb.Settings) { s.MixRate = 1e6 }))
			return err
		}, "mix_rate 1e+06 is out of range"},
		{"mix rate NaN", func() error {
			_, err := ts.client.SetSettings(ctx, with(func(s *pb.Settings) { s.MixRate = math.NaN() }))
			return err
		}, "mix_rate NaN is out of range"},
		{"loop rate above mix rate", func() error {
			_, err := ts.client.SetSettings(ctx, with(func(s *pb.Settings) { s.MixRate = 5; s.LoopRate = 6 }))
			return err
		}, "loop_rate 6 is above mix_rate 5"},
		{"zero delay", func() error {
			_, err := ts.client.SetSettings(ctx, with(func(s *pb.Settings) { s.MeanDelayMs = 0 }))
			return err
		}, "mean_delay_ms 0 is out of range"},
		{"settings mode missing", func() error {
			_, err := ts.client.SetSettings(ctx, &pb.SetSettingsRequest{})
			return err
		}, "mode is missing"},
		{"unknown mask field", func() error {
			_, err := ts.client.SetSettings(ctx, &pb.SetSettingsRequest{Settings: good, UpdateMask: []string{"colour"}})
			return err
		}, `unknown setting "colour"`},
		{"bad stats interval", func() error {
			stream, err := ts.client.WatchStats(ctx, &pb.WatchStatsRequest{IntervalMs: 5})
			if err != nil {
				return err
			}
			_, err = stream.Recv()
			return err
		}, "interval_ms 5 is out of range"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := c.call()
			if c.want == "" {
				if err != nil {
					t.Fatalf("got %v, want success", err)
				}
				return
			}
			if status.Code(err) != codes.InvalidArgument {
				t.Fatalf("got %v, want InvalidArgument", err)
			}
			if msg := status.Convert(err).Message(); !strings.Contains(msg, c.want) {
				t.Fatalf("message %q does not say %q", msg, c.want)
			}
		})
	}
	if got := SettingsToProto(ts.fake.Settings()); !equalSettings(got, good) {
		t.Fatalf("invalid requests changed the settings: %v, was %v", got, good)
	}
}

// notFoundIsOK lets a case expect success: lower-case two-letter values are
// gateway IDs, which the fake then does not find.
func notFoundIsOK(err error) error {
	if status.Code(err) == codes.NotFound {
		return nil
	}
	return err
}

func equalSettings(a, b *pb.Settings) bool {
	return SettingsToProto(mustSettings(a)).String() == SettingsToProto(mustSettings(b)).String()
}

func mustSettings(s *pb.Settings) Settings {
	out, err := SettingsFromProto(s)
	if err != nil {
		panic(err)
	}
	return out
}

func TestSetSettingsMask(t *testing.T) {
	ts := startServer(t, ListenConfig{})
	ctx := callCtx(t)
	before := ts.fake.Settings()
	got, err := ts.client.SetSettings(ctx, &pb.SetSettingsRequest{
		Settings:   &pb.Settings{MixRate: 300, DnsServers: []string{"9.9.9.9", "1.1.1.1"}, Exit: "CH"},
		UpdateMask: []string{"mix_rate", "dns_servers", "exit"},
	})
	if err != nil {
		t.Fatalf("SetSettings: %v", err)
	}
	want := before
	want.MixRate = 300
	want.Exit = "CH"
	want.DNSServers = nil
	for _, s := range []string{"9.9.9.9", "1.1.1.1"} {
		want.DNSServers = append(want.DNSServers, mustAddr(s))
	}
	if !equalSettings(got, SettingsToProto(want)) || !equalSettings(SettingsToProto(ts.fake.Settings()), SettingsToProto(want)) {
		t.Fatalf("after a masked update: %v, want %v", got, SettingsToProto(want))
	}
}

func TestWatchEvents(t *testing.T) {
	ts := startServer(t, ListenConfig{})
	ctx, cancel := context.WithCancel(callCtx(t))
	stream, err := ts.client.WatchEvents(ctx, &pb.WatchEventsRequest{})
	if err != nil {
		t.Fatalf("WatchEvents: %v", err)
	}
	first, err := stream.Recv()
	if err != nil {
		t.Fatalf("first event: %v", err)
	}
	if first.Status.State != pb.State_STATE_DISCONNECTED || first.Status.DaemonVersion != "v9.9.9" {
		t.Fatalf("first event %v, want the current status", first)
	}
	if _, err := ts.client.Connect(ctx, &pb.ConnectRequest{}); err != nil {
		t.Fatalf("Connect: %v", err)
	}
	ts.fake.Fail("entry unreachable")
	for _, want := range []pb.State{pb.State_STATE_CONNECTING, pb.State_STATE_CONNECTED, pb.State_STATE_ERROR} {
		ev, err := stream.Recv()
		if err != nil {
			t.Fatalf("waiting for %v: %v", want, err)
		}
		if ev.Status.State != want {
			t.Fatalf("event %v, want %v", ev.Status.State, want)
		}
		if want == pb.State_STATE_ERROR && ev.Status.Error != "entry unreachable" {
			t.Fatalf("error event says %q", ev.Status.Error)
		}
	}
	cancel()
	waitFor(t, "the stream to unsubscribe", func() bool { return ts.fake.Subscribers() == 0 })
}

func TestWatchStats(t *testing.T) {
	ts := startServer(t, ListenConfig{})
	ctx := callCtx(t)
	ts.fake.SetStats(Stats{BytesIn: 1000, BytesOut: 500, LoopsSent: 3, SURBsMade: 7, Latency: 90 * time.Millisecond})
	stream, err := ts.client.WatchStats(ctx, &pb.WatchStatsRequest{IntervalMs: 100})
	if err != nil {
		t.Fatalf("WatchStats: %v", err)
	}
	first, err := stream.Recv()
	if err != nil {
		t.Fatalf("first sample: %v", err)
	}
	s := StatsFromProto(first)
	if s.BytesIn != 1000 || s.LoopsSent != 3 || s.SURBsMade != 7 || s.Latency != 90*time.Millisecond || s.RateIn != 0 {
		t.Fatalf("first sample %+v", s)
	}
	ts.fake.SetStats(Stats{BytesIn: 3000, BytesOut: 500})
	// Samples may have been taken before SetStats; the rate shows up
	// within a few.
	for i := 0; ; i++ {
		next, err := stream.Recv()
		if err != nil {
			t.Fatalf("sample: %v", err)
		}
		if next.BytesIn == 3000 {
			if next.RateIn <= 0 || next.RateOut != 0 {
				t.Fatalf("rates in %v out %v, want in > 0 and out 0", next.RateIn, next.RateOut)
			}
			break
		}
		if i == 20 {
			t.Fatal("new counters never arrived")
		}
	}
}

func TestServeStopEndsStreams(t *testing.T) {
	ts := startServer(t, ListenConfig{})
	ctx := callCtx(t)
	events, err := ts.client.WatchEvents(ctx, &pb.WatchEventsRequest{})
	if err != nil {
		t.Fatalf("WatchEvents: %v", err)
	}
	if _, err := events.Recv(); err != nil {
		t.Fatalf("first event: %v", err)
	}
	stats, err := ts.client.WatchStats(ctx, &pb.WatchStatsRequest{})
	if err != nil {
		t.Fatalf("WatchStats: %v", err)
	}
	if _, err := stats.Recv(); err != nil {
		t.Fatalf("first sample: %v", err)
	}
	ts.stop(t)
	for _, recv := range []func() error{
		func() error { _, err := events.Recv(); return err },
		func() error { _, err := stats.Recv(); return err },
	} {
		if err := recv(); status.Code(err) != codes.Unavailable {
			t.Fatalf("stream after stop: %v, want Unavailable", err)
		}
	}
	if _, err := os.Stat(ts.path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket left behind after stop: %v", err)
	}
}

func TestListenSocketFile(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "run")
	path := filepath.Join(dir, "d.sock")
	var logs bytes.Buffer
	l, err := Listen(context.Background(), ListenConfig{Path: path, Group: "mixvpn-test-no-such-group", Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatalf("Listen: %v", err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatalf("socket: %v", err)
	}
	if fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm() != 0o660 {
		t.Fatalf("socket mode %v, want socket 0660", fi.Mode())
	}
	if l.access.hasGroup || !strings.Contains(logs.String(), "group not found") {
		t.Fatalf("a missing group: hasGroup %v, log %q", l.access.hasGroup, logs.String())
	}

	// While it is served, a second daemon must not take it over.
	if _, err := Listen(context.Background(), ListenConfig{Path: path}); err == nil || !strings.Contains(err.Error(), "another mixvpnd") {
		t.Fatalf("Listen on a live socket: %v", err)
	}

	// A daemon that died leaves the socket behind.
	l.SetUnlinkOnClose(false)
	l.Close()
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("stale socket missing: %v", err)
	}
	l2, err := Listen(context.Background(), ListenConfig{Path: path, Group: ownGroup(t)})
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	if !l2.access.hasGroup || int(l2.access.gid) != os.Getgid() {
		t.Fatalf("access %+v, want the test's group", l2.access)
	}
	l2.Close()

	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(context.Background(), ListenConfig{Path: file}); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("Listen over a regular file: %v", err)
	}
}

func TestUnauthenticatedConnRefused(t *testing.T) {
	// A server whose connections did not come through peerCredentials
	// (no PeerInfo) must refuse, not admit.
	a := access{group: "mixvpn"}
	err := a.authorize(context.Background(), slog.New(slog.DiscardHandler), "/x")
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "sudo usermod -aG mixvpn $USER") {
		t.Fatalf("authorize without a peer: %v", err)
	}
	if _, _, err := (peerCredentials{}).ServerHandshake(pipeConn{}); err == nil {
		t.Fatal("handshake on a non-socket succeeded")
	}
}

type pipeConn struct{ net.Conn }

func TestAccessAllows(t *testing.T) {
	withGroup := access{group: "mixvpn", gid: 990, hasGroup: true}
	noGroup := access{group: "mixvpn"}
	for _, c := range []struct {
		name string
		a    access
		p    PeerInfo
		want bool
	}{
		{"root", noGroup, PeerInfo{UID: 0, GID: 0}, true},
		{"primary group", withGroup, PeerInfo{UID: 1000, GID: 990}, true},
		{"supplementary group", withGroup, PeerInfo{UID: 1000, GID: 1000, Groups: []uint32{27, 990}}, true},
		{"other user", withGroup, PeerInfo{UID: 1000, GID: 1000, Groups: []uint32{27}}, false},
		{"no group configured", noGroup, PeerInfo{UID: 1000, GID: 0, Groups: []uint32{0}}, false},
	} {
		if got := c.a.allows(c.p); got != c.want {
			t.Errorf("%s: allows = %v, want %v", c.name, got, c.want)
		}
	}
}

func TestParseProcStatus(t *testing.T) {
	const status = "Name:\tbash\nUmask:\t0022\nUid:\t1000\t1001\t1001\t1001\nGid:\t1000\t1000\t1000\t1000\nGroups:\t4 27 990 \nNgid:\t0\n"
	euid, groups, err := parseProcStatus(strings.NewReader(status))
	if err != nil {
		t.Fatal(err)
	}
	if euid != 1001 || len(groups) != 3 || groups[2] != 990 {
		t.Fatalf("euid %d groups %v", euid, groups)
	}
	if _, groups, err := parseProcStatus(strings.NewReader("Uid:\t5\t5\t5\t5\nGroups:\n")); err != nil || len(groups) != 0 {
		t.Fatalf("no groups: %v %v", groups, err)
	}
	for _, bad := range []string{"", "Uid:\t1\t1\nGroups:\tx\n", "Groups:\t1\n", "Uid:\nGroups:\n"} {
		if _, _, err := parseProcStatus(strings.NewReader(bad)); err == nil {
			t.Errorf("parsed %q", bad)
		}
	}
	// The test's own process, whose groups the kernel knows.
	if g := procGroups(int32(os.Getpid()), uint32(os.Geteuid())); g == nil {
		t.Error("procGroups of self is nil")
	}
	if g := procGroups(int32(os.Getpid()), uint32(os.Geteuid())+1); g != nil {
		t.Error("procGroups trusted a process whose uid differs")
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

var _ grpc.ServerStreamingServer[pb.Event] = (*fakeStream[pb.Event])(nil)

// fakeStream is a server stream for calling handlers directly.
type fakeStream[T any] struct {
	grpc.ServerStream
	ctx  context.Context
	sent int
}

func (s *fakeStream[T]) Context() context.Context { return s.ctx }
func (s *fakeStream[T]) Send(*T) error {
	s.sent++
	if s.sent > 4 {
		return io.EOF
	}
	return nil
}

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }
