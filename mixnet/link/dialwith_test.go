package link

import (
	"context"
	"errors"
	"net"
	"testing"
)

// DialWith runs the handshake on what its hook dialed, and a hook's
// failure is the dial's.
func TestDialWithUsesTheHook(t *testing.T) {
	srvKey := mustKey(t)
	addr, conns := server(t, ListenerConfig{Config: Config{Static: srvKey}})
	var asked []string
	hook := func(ctx context.Context, a string) (net.Conn, error) {
		asked = append(asked, a)
		var d net.Dialer
		return d.DialContext(ctx, "tcp", a)
	}
	c, err := DialWith(context.Background(), hook, addr, srvKey.Public, Config{Static: mustKey(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	within(t, conns).Close()
	if len(asked) != 1 || asked[0] != addr {
		t.Fatalf("hook asked for %v, want [%s]", asked, addr)
	}

	refused := errors.New("no route")
	_, err = DialWith(context.Background(), func(context.Context, string) (net.Conn, error) { return nil, refused }, addr, srvKey.Public, Config{Static: mustKey(t)})
	if !errors.Is(err, refused) {
		t.Fatalf("error %v does not wrap the hook's", err)
	}
}
