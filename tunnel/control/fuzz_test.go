package control

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	pb "github.com/mixvpn/mixvpn/tunnel/control/controlpb"
)

// FuzzRequests decodes the input as every request message in turn and
// hands each one that decodes to its handler, with a Fake behind it. Bad
// requests must come back as INVALID_ARGUMENT with a message, never as a
// panic or another code, and the daemon must never be given settings that
// do not validate. The seed corpus holds valid and invalid requests of each
// kind.
func FuzzRequests(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		fake := NewFake(FakeConfig{})
		svc := &service{srv: &Server{
			cfg: Config{Daemon: fake, StatsInterval: DefaultStatsInterval, Version: "fuzz"},
			log: slog.New(slog.DiscardHandler),
		}}
		ctx := context.Background()
		// A cancelled stream context makes the watch handlers return after
		// their first send.
		gone, cancel := context.WithCancel(ctx)
		cancel()

		check := func(method string, err error) {
			t.Helper()
			if err == nil {
				return
			}
			st := status.Convert(err)
			if st.Code() != codes.InvalidArgument || st.Message() == "" {
				t.Fatalf("%s: %v, want InvalidArgument with a message", method, err)
			}
		}
		decode := func(m proto.Message) bool { return proto.Unmarshal(data, m) == nil }

		if r := new(pb.GetStatusRequest); decode(r) {
			_, err := svc.GetStatus(ctx, r)
			check("GetStatus", err)
		}
		if r := new(pb.ConnectRequest); decode(r) {
			_, err := svc.Connect(ctx, r)
			check("Connect", err)
		}
		if r := new(pb.DisconnectRequest); decode(r) {
			_, err := svc.Disconnect(ctx, r)
			check("Disconnect", err)
		}
		if r := new(pb.SetModeRequest); decode(r) {
			_, err := svc.SetMode(ctx, r)
			check("SetMode", err)
		}
		if r := new(pb.ListGatewaysRequest); decode(r) {
			_, err := svc.ListGateways(ctx, r)
			check("ListGateways", err)
		}
		if r := new(pb.GetSettingsRequest); decode(r) {
			_, err := svc.GetSettings(ctx, r)
			check("GetSettings", err)
		}
		if r := new(pb.SetSettingsRequest); decode(r) {
			_, err := svc.SetSettings(ctx, r)
			check("SetSettings", err)
			if err := fake.Settings().Validate(); err != nil {
				t.Fatalf("SetSettings stored invalid settings: %v", err)
			}
		}
		if r := new(pb.WatchEventsRequest); decode(r) {
			check("WatchEvents", svc.WatchEvents(r, &fakeStream[pb.Event]{ctx: gone}))
		}
		if r := new(pb.WatchStatsRequest); decode(r) {
			start := time.Now()
			check("WatchStats", svc.WatchStats(r, &fakeStream[pb.Stats]{ctx: gone}))
			if time.Since(start) > time.Second {
				t.Fatal("WatchStats did not return promptly for a gone client")
			}
		}
		if fake.Subscribers() != 0 {
			t.Fatal("a watch stream left its subscription open")
		}
	})
}
