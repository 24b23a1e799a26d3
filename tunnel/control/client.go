package control

import (
	"context"
	"fmt"
	"net"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	pb "github.com/mixvpn/mixvpn/tunnel/control/controlpb"
)

// Dial makes a client of the control API on the socket at path. Like
// grpc.NewClient it connects lazily, so a daemon that is not running shows
// up as UNAVAILABLE on the first call.
func Dial(path string) (pb.ControlClient, *grpc.ClientConn, error) {
	// passthrough keeps gRPC from resolving the name: the dialer ignores
	// it and any path, relative or not, works.
	cc, err := grpc.NewClient("passthrough:///mixvpnd",
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		}),
	)
	if err != nil {
		return nil, nil, fmt.Errorf("control: client for %s: %w", path, err)
	}
	return pb.NewControlClient(cc), cc, nil
}
