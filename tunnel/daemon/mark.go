package daemon

import (
	"context"
	"net"
	"net/http"
	"time"

	"github.com/mixvpn/mixvpn/platform/linksock"
)

// dialFunc opens a connection the way net.Dialer.DialContext does.
type dialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// httpTimeout bounds one request to the directory, as the directory
// package's own default client does.
const httpTimeout = 10 * time.Second

// markedDial dials for the daemon's own traffic (the directory, Fast
// mode's registration, probes of entries) with the router's mark. While a
// tunnel is up, unmarked sockets follow the default route into it; the
// bypass rules catch only the endpoints known when the routes were set,
// so it is the mark that keeps a socket to any of them, or to a gateway
// of a newer document, out of the tunnel.
func (d *Daemon) markedDial(ctx context.Context, network, addr string) (net.Conn, error) {
	dl := net.Dialer{Control: linksock.MarkControl(d.mark)}
	return dl.DialContext(ctx, network, addr)
}

// dialLink is d.dial in the shape of the link's dial hooks.
func (d *Daemon) dialLink(ctx context.Context, addr string) (net.Conn, error) {
	return d.dial(ctx, "tcp", addr)
}

// newHTTPClient is the client of the daemon's requests to the directory:
// every connection through d.dial, and none through a proxy from the
// environment, since the firewall lets the daemon reach the directory
// itself and nothing else.
func (d *Daemon) newHTTPClient() *http.Client {
	return &http.Client{Timeout: httpTimeout, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return d.dial(ctx, network, addr)
		},
		ForceAttemptHTTP2:   true,
		TLSHandshakeTimeout: httpTimeout,
		IdleConnTimeout:     90 * time.Second,
		MaxIdleConns:        4,
	}}
}
