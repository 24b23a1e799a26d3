package control

import (
	"testing"
	"time"

	pb "github.com/mixvpn/mixvpn/tunnel/control/controlpb"
)

// Every field of a stats sample and every state survive the trip through
// protobuf, so the CLI shows what the daemon counted.
func TestConvertRoundTrip(t *testing.T) {
	at := time.UnixMilli(1_900_000_000_123)
	in := StatsSample{
		Stats: Stats{
			Mode: ModeAnonymous, BytesIn: 1, BytesOut: 2, Latency: 3 * time.Millisecond, LastHandshake: at.Add(-time.Minute),
			RealPackets: 4, CoverPackets: 5, LoopsSent: 6, LoopsReturned: 7, LoopsLost: 8,
			LoopRTTP50: 9 * time.Millisecond, LoopRTTP90: 10 * time.Millisecond, SURBsMade: 11, SURBsUsed: 12, SURBStock: 13,
		},
		Time: at, RateIn: 14.5, RateOut: 15.5,
	}
	if out := StatsFromProto(StatsToProto(in)); out != in {
		t.Fatalf("stats came back as\n%+v\nwant\n%+v", out, in)
	}
	for s := StateDisconnected; s <= StateReconnecting; s++ {
		if got := StateFromProto(StateToProto(s)); got != s {
			t.Errorf("state %v came back as %v", s, got)
		}
		if _, ok := pb.State_name[int32(StateToProto(s))]; !ok {
			t.Errorf("state %v has no protobuf name", s)
		}
	}
	if StateReconnecting.String() != "reconnecting" || StateToProto(StateReconnecting) != pb.State_STATE_RECONNECTING {
		t.Fatalf("reconnecting is %q, %v", StateReconnecting, StateToProto(StateReconnecting))
	}
}
