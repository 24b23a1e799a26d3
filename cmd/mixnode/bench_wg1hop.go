package main

import (
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun"

	"github.com/mixvpn/mixvpn/platform/netns"
)

// The single-hop baseline of `make bench-net`: what one plain WireGuard
// tunnel carries between the same two namespaces Fast mode's two hops
// join, the client's and the internet host's. Each side is a wireguard-go
// device of the same version Fast mode runs, on a TUN with the same
// offloads, both in this process. The figures:
//
//	wg1hop_goodput_mbps       iperf3 (one TCP stream, 5 s) to the internet host's iperf3 server
//	wg1hop_http_goodput_mbps  the 64 MiB download fast_goodput_mbps makes, through the one hop
const (
	wg1hopPort = 51900
	wg1hopMTU  = device.DefaultMTU // what wg-quick gives a tunnel over a 1500-byte path
	wg1hopTime = 5                 // seconds of iperf3
)

var (
	wg1hopClient = netip.MustParsePrefix("10.199.0.2/24")
	wg1hopServer = netip.MustParsePrefix("10.199.0.1/24")
)

// benchWG1Hop prints the single-hop figures. It runs before the daemon
// connects, so that nothing of the daemon's (routes, kill switch) is in
// the way, and leaves nothing behind.
func benchWG1Hop(ctx context.Context, cd *clientDaemon, inet netip.Addr) error {
	client, ok := cd.host.(*netns.Host)
	if !ok {
		return nil // the unprivileged network has no namespaces to join
	}
	// Every namespace of a lab is named "<run id>-<host>".
	server := &netns.Host{Name: "inet", NS: strings.TrimSuffix(client.NS, client.Name) + "inet"}
	var keys [2]*ecdh.PrivateKey
	for i := range keys {
		k, err := ecdh.X25519().GenerateKey(rand.Reader)
		if err != nil {
			return err
		}
		keys[i] = k
	}
	srv, err := startWG1Hop(server, "wg1hs", keys[1], keys[0].PublicKey(), wg1hopServer, wg1hopPort, netip.AddrPort{})
	if err != nil {
		return fmt.Errorf("wg1hop: server side: %w", err)
	}
	defer srv.Close()
	cli, err := startWG1Hop(client, "wg1hc", keys[0], keys[1].PublicKey(), wg1hopClient, 0, netip.AddrPortFrom(inet, wg1hopPort))
	if err != nil {
		return fmt.Errorf("wg1hop: client side: %w", err)
	}
	defer cli.Close()

	to := wg1hopServer.Addr().String()
	out, err := cd.fetch(ctx, "http://"+to+"/blob/67108864", "--kv", "wg1hop_http")
	if err != nil {
		return fmt.Errorf("wg1hop: %w", err)
	}
	fmt.Print(out)
	ictx, cancel := context.WithTimeout(ctx, (wg1hopTime+10)*time.Second)
	defer cancel()
	raw, err := client.Command(ictx, "iperf3", "-c", to, "-t", fmt.Sprint(wg1hopTime), "-J").Output()
	if err != nil {
		return fmt.Errorf("wg1hop: iperf3 through the tunnel: %w: %s", err, raw)
	}
	var res struct {
		End struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
		Error string `json:"error"`
	}
	if err := json.Unmarshal(raw, &res); err != nil || res.Error != "" || res.End.SumReceived.BitsPerSecond <= 0 {
		return fmt.Errorf("wg1hop: iperf3 result: %v %s", err, res.Error)
	}
	fmt.Printf("wg1hop_goodput_mbps=%.2f\n", res.End.SumReceived.BitsPerSecond/1e6)
	return nil
}

// wg1hopEnd is one side of the baseline tunnel.
type wg1hopEnd struct {
	dev *device.Device
}

func (e *wg1hopEnd) Close() { e.dev.Close() }

// startWG1Hop makes a WireGuard device in h with address addr and one
// peer, whose address is in addr's prefix: listening on port (0: any),
// sending to endpoint if it is valid.
// Everything that opens a socket or a device happens inside h's namespace
// (netns.Host.Do): the TUN, the addresses, and the device's sockets, which
// its Up opens. Its TUN's up and down events are kept from it, or the
// device would reopen its sockets from whichever thread saw the event, in
// this process's own namespace.
func startWG1Hop(h *netns.Host, name string, priv *ecdh.PrivateKey, peer *ecdh.PublicKey, addr netip.Prefix, port int, endpoint netip.AddrPort) (*wg1hopEnd, error) {
	var end *wg1hopEnd
	err := h.Do(func() error {
		t, err := tun.CreateTUN(name, wg1hopMTU)
		if err != nil {
			return fmt.Errorf("TUN %s: %w", name, err)
		}
		logger := &device.Logger{Verbosef: device.DiscardLogf, Errorf: func(f string, a ...any) {
			fmt.Fprintf(os.Stderr, "wg1hop %s: "+f+"\n", append([]any{name}, a...)...)
		}}
		dev := device.NewDevice(&quietTUN{Device: t, events: make(chan tun.Event)}, conn.NewDefaultBind(), logger)
		var b strings.Builder
		fmt.Fprintf(&b, "private_key=%s\nlisten_port=%d\npublic_key=%s\n", hex.EncodeToString(priv.Bytes()), port, hex.EncodeToString(peer.Bytes()))
		if endpoint.IsValid() {
			fmt.Fprintf(&b, "endpoint=%s\n", endpoint)
		}
		fmt.Fprintf(&b, "allowed_ip=%s\n", addr.Masked())
		if err := dev.IpcSet(b.String()); err != nil {
			dev.Close()
			return fmt.Errorf("configure %s: %w", name, err)
		}
		if err := linkUp(name, addr); err != nil {
			dev.Close()
			return err
		}
		if err := dev.Up(); err != nil {
			dev.Close()
			return fmt.Errorf("up %s: %w", name, err)
		}
		end = &wg1hopEnd{dev: dev}
		return nil
	})
	return end, err
}

// quietTUN is a TUN whose events its device never sees, so that only an
// explicit Up or Down changes the device's state.
type quietTUN struct {
	tun.Device
	events chan tun.Event
	once   sync.Once
}

// Events never delivers; Close ends it.
func (q *quietTUN) Events() <-chan tun.Event { return q.events }

// Close closes the TUN and ends the events, which stops the device's
// event reader.
func (q *quietTUN) Close() error {
	err := q.Device.Close()
	q.once.Do(func() { close(q.events) })
	return err
}
