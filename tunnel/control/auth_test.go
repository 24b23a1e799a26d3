package control

import (
	"context"
	"log/slog"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// A connection whose caller the OS could not name is refused even when
// the access rule would admit everyone, and the refusal carries the
// reason, which the CLI shows as is.
func TestUnidentifiedPeerRefused(t *testing.T) {
	a := access{group: "mixvpn", gid: 0, hasGroup: true}
	const reason = "mixvpn: peer credentials not supported yet on plan9"
	ctx := peer.NewContext(context.Background(), &peer.Peer{AuthInfo: unidentifiedPeer{reason: reason}})
	err := a.authorize(ctx, slog.New(slog.DiscardHandler), "/x")
	if status.Code(err) != codes.PermissionDenied || status.Convert(err).Message() != reason {
		t.Fatalf("authorize of an unidentified peer: %v", err)
	}
}
