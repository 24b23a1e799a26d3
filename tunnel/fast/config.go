package fast

import (
	"crypto/ecdh"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"golang.zx2c4.com/wireguard/conn"
)

// Overheads that fix the inner MTU from the outer one. One WireGuard layer
// adds its 16-byte transport header and 16-byte tag, and the datagram it
// rides in adds UDP and IP headers; counting IPv6 (the larger) keeps the rule
// right whichever family the exit endpoint has.
const (
	wireGuardOverhead = 16 + 16
	ipv4HeaderLen     = 20
	ipv6HeaderLen     = 40
	udpHeaderLen      = 8

	// HopOverhead is what one WireGuard hop costs per packet at worst:
	// the WireGuard framing plus an IPv6 and UDP header.
	HopOverhead = wireGuardOverhead + ipv6HeaderLen + udpHeaderLen

	// DefaultOuterMTU is the entry tunnel's MTU when the path to the entry
	// carries 1500-byte packets, as wg-quick assumes.
	DefaultOuterMTU = 1500 - HopOverhead

	// DefaultMTU is the user-facing (inner) MTU: one more hop inside
	// DefaultOuterMTU, so that neither layer ever fragments.
	DefaultMTU = DefaultOuterMTU - HopOverhead

	minMTU = 576
	maxMTU = 9000
)

// Key is a Curve25519 key as WireGuard uses it: a private key or a public one.
type Key [32]byte

// ParseKey decodes a key in the base64 form wg(8) and wg-quick use.
func ParseKey(s string) (Key, error) {
	var k Key
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return k, fmt.Errorf("key is not base64: %w", err)
	}
	if len(b) != len(k) {
		return k, fmt.Errorf("key is %d bytes, want %d", len(b), len(k))
	}
	copy(k[:], b)
	return k, nil
}

// IsZero reports whether k is unset.
func (k Key) IsZero() bool { return k == Key{} }

// Public returns the public key of the private key k, for showing a user the
// key to register with a gateway.
func (k Key) Public() (Key, error) {
	priv, err := ecdh.X25519().NewPrivateKey(k[:])
	if err != nil {
		return Key{}, fmt.Errorf("derive public key: %w", err)
	}
	return Key(priv.PublicKey().Bytes()), nil
}

// Hop is the gateway at one end of one WireGuard hop.
type Hop struct {
	// PublicKey is the gateway's public key.
	PublicKey Key
	// Endpoint is where the gateway listens. For the exit hop it must be an
	// address the entry gateway can reach.
	Endpoint netip.AddrPort
	// AllowedIPs is what the hop carries. For the exit these are the
	// destinations the user reaches through the tunnel (empty means all of
	// IPv4 and IPv6). For the entry the tunnel always narrows them to the exit
	// endpoint alone; a non-empty list must at least cover it.
	AllowedIPs []netip.Prefix
	// PresharedKey adds a symmetric key to the handshake; zero means none.
	PresharedKey Key
	// PersistentKeepalive, when non-zero, keeps NAT state alive with a
	// keepalive at this interval (whole seconds, at most 65535 s).
	PersistentKeepalive time.Duration
}

// Config is what a Fast-mode tunnel needs: two hops and the client's identity
// on each. The entry learns the client's address but only ever sees sealed
// traffic to the exit; the exit sees the destinations but only the entry as
// source. Separate private keys keep the two gateways from linking the client
// by key.
type Config struct {
	// PrivateKeyEntry is the client's key towards the entry gateway.
	PrivateKeyEntry Key
	// PrivateKeyExit is the client's key towards the exit gateway. It must
	// differ from PrivateKeyEntry.
	PrivateKeyExit Key

	// Entry is the first hop, reached directly over the network.
	Entry Hop
	// Exit is the second hop, reached through the entry.
	Exit Hop

	// EntryAddrs are the client's addresses inside the entry tunnel. The one
	// of the exit endpoint's family is the source of the inner datagrams.
	EntryAddrs []netip.Prefix
	// InnerAddrs are the client's addresses inside the exit tunnel: the
	// daemon puts them on the user-facing device.
	InnerAddrs []netip.Prefix
	// DNS are resolvers to use through the exit; the daemon applies them.
	DNS []netip.Addr

	// MTU is the user-facing (inner) MTU; 0 means DefaultMTU. The entry
	// tunnel runs at MTU+HopOverhead. The device handed to New must not have
	// a larger MTU, or packets would fragment.
	MTU int

	// FwMark marks the outer UDP socket so the daemon's routing can keep it
	// out of the tunnel; 0 leaves it unmarked.
	FwMark uint32

	// Logger receives the tunnel's logs; nil discards them.
	Logger *slog.Logger

	// Outer is the socket to the entry gateway; nil means
	// conn.NewDefaultBind(). The Tunnel owns and closes it.
	Outer conn.Bind
}

// OuterMTU returns the MTU the entry tunnel runs at for this config.
func (c *Config) OuterMTU() int { return c.MTU + HopOverhead }

// normalise checks c and fills in defaults, returning the copy the tunnel runs.
func (c Config) normalise() (Config, error) {
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.MTU == 0 {
		c.MTU = DefaultMTU
	}
	if c.MTU < minMTU || c.MTU > maxMTU {
		return c, fmt.Errorf("MTU %d is outside [%d, %d]", c.MTU, minMTU, maxMTU)
	}
	if c.PrivateKeyEntry.IsZero() || c.PrivateKeyExit.IsZero() {
		return c, errors.New("both hops need a private key")
	}
	if c.PrivateKeyEntry == c.PrivateKeyExit {
		return c, errors.New("entry and exit private keys are the same, which would let the two gateways link the client")
	}
	for _, h := range []struct {
		name string
		hop  *Hop
	}{{"entry", &c.Entry}, {"exit", &c.Exit}} {
		if h.hop.PublicKey.IsZero() {
			return c, fmt.Errorf("%s hop has no public key", h.name)
		}
		if !h.hop.Endpoint.IsValid() || h.hop.Endpoint.Port() == 0 || h.hop.Endpoint.Addr().IsUnspecified() {
			return c, fmt.Errorf("%s hop endpoint %v is not an address and port", h.name, h.hop.Endpoint)
		}
		h.hop.Endpoint = netip.AddrPortFrom(h.hop.Endpoint.Addr().Unmap(), h.hop.Endpoint.Port())
		if ka := h.hop.PersistentKeepalive; ka < 0 || ka > 65535*time.Second {
			return c, fmt.Errorf("%s hop keepalive %v is outside [0, 65535s]", h.name, ka)
		}
		for _, p := range h.hop.AllowedIPs {
			if !p.IsValid() {
				return c, fmt.Errorf("%s hop has an invalid allowed IP prefix", h.name)
			}
		}
	}
	if c.Entry.PublicKey == c.Exit.PublicKey {
		return c, errors.New("entry and exit have the same public key")
	}
	if c.Entry.Endpoint == c.Exit.Endpoint {
		return c, fmt.Errorf("entry and exit share the endpoint %v", c.Entry.Endpoint)
	}
	exitIP := c.Exit.Endpoint.Addr()
	if len(c.Entry.AllowedIPs) > 0 && !covers(c.Entry.AllowedIPs, exitIP) {
		return c, fmt.Errorf("entry allowed IPs %v do not cover the exit endpoint %v", c.Entry.AllowedIPs, exitIP)
	}
	if len(c.Exit.AllowedIPs) == 0 {
		c.Exit.AllowedIPs = []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")}
	}
	for _, p := range append(c.EntryAddrs[:len(c.EntryAddrs):len(c.EntryAddrs)], c.InnerAddrs...) {
		if !p.IsValid() {
			return c, errors.New("invalid tunnel address")
		}
	}
	if !sourceFor(c.EntryAddrs, exitIP).IsValid() {
		return c, fmt.Errorf("no entry tunnel address of the exit endpoint's family (%v)", exitIP)
	}
	return c, nil
}

// covers reports whether any of ps contains a.
func covers(ps []netip.Prefix, a netip.Addr) bool {
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// sourceFor picks the first address in addrs of dst's family.
func sourceFor(addrs []netip.Prefix, dst netip.Addr) netip.Addr {
	for _, p := range addrs {
		if a := p.Addr().Unmap(); a.Is4() == dst.Is4() {
			return a
		}
	}
	return netip.Addr{}
}
