package client

import (
	"context"
	"errors"
	"fmt"
	"net"

	"github.com/mixvpn/mixvpn/mixnet/directory"
	"github.com/mixvpn/mixvpn/mixnet/gateway"
	"github.com/mixvpn/mixvpn/mixnet/link"
	"github.com/mixvpn/mixvpn/mixnet/register"
	"github.com/mixvpn/mixvpn/mixnet/session"
	"github.com/mixvpn/mixvpn/mixnet/sphinx"
)

// RegisterConfig says where Fast mode registers its WireGuard keys.
type RegisterConfig struct {
	// Epoch is the key epoch of the Sphinx keys to use.
	Epoch uint64
	// Entry and Exit are the gateways, from a verified document.
	Entry, Exit *directory.Descriptor
	// EntryRequest and ExitRequest carry the client's two WireGuard keys
	// (different ones, so the gateways cannot link them).
	EntryRequest, ExitRequest register.Request
	// LinkKey is the client's link identity; zero makes a fresh one.
	LinkKey link.KeyPair
	// DialLink, if set, opens the TCP connection to the entry (see
	// link.DialWith), as ConnectConfig.DialLink does: a daemon marks it
	// there so that it goes around the tunnel already up.
	DialLink func(ctx context.Context, addr string) (net.Conn, error)
}

// Register registers with both gateways of a Fast-mode path at once. The
// entry is asked over the link. The exit is asked in a Sphinx packet the
// entry forwards, answered in a reply block back to the entry: the exit
// never learns the client's address, and the entry cannot read either
// the request or the answer.
func Register(ctx context.Context, cfg RegisterConfig) (entry, exit *register.Response, err error) {
	if cfg.Entry == nil || cfg.Exit == nil {
		return nil, nil, errors.New("client: register: no entry or exit")
	}
	key := cfg.LinkKey
	if key.Public == ([32]byte{}) {
		if key, err = link.GenerateKey(); err != nil {
			return nil, nil, fmt.Errorf("client: link key: %w", err)
		}
	}
	hop := func(d *directory.Descriptor) (sphinx.Hop, error) {
		k, err := d.SphinxKey(cfg.Epoch)
		return sphinx.Hop{Address: d.MixAddress(), Key: k}, err
	}
	eh, err := hop(cfg.Entry)
	if err != nil {
		return nil, nil, fmt.Errorf("client: register: %w", err)
	}
	xh, err := hop(cfg.Exit)
	if err != nil {
		return nil, nil, fmt.Errorf("client: register: %w", err)
	}
	surb, keys, err := sphinx.NewSURB(nil, []sphinx.Hop{eh}, gateway.ClientAddress(key.Public), randomID())
	if err != nil {
		return nil, nil, fmt.Errorf("client: register: %w", err)
	}
	entryReq, err := register.Marshal(cfg.EntryRequest)
	if err != nil {
		return nil, nil, err
	}
	exitReq, err := register.Marshal(cfg.ExitRequest)
	if err != nil {
		return nil, nil, err
	}
	var b session.Builder
	var sid session.ID
	cryptoRead(sid[:])
	b.Reset(make([]byte, session.MaxMessageSize), sid)
	if err := b.Blob(session.RecordRegister, exitReq); err != nil {
		return nil, nil, fmt.Errorf("client: register: %w", err)
	}
	if err := b.SURB(surb); err != nil {
		return nil, nil, fmt.Errorf("client: register: %w", err)
	}
	pkt, err := sphinx.NewPacket(nil, []sphinx.Hop{eh, xh}, xh.Address, sphinx.MessageID{}, b.Bytes())
	if err != nil {
		return nil, nil, fmt.Errorf("client: register: %w", err)
	}

	entryAns := make(chan []byte, 1)
	exitAns := make(chan []byte, 1)
	c, err := link.DialWith(ctx, cfg.DialLink, cfg.Entry.Address, cfg.Entry.LinkPublicKey(), link.Config{Static: key, Handler: func(_ *link.Conn, t link.FrameType, body []byte) {
		switch t {
		case link.FrameControl:
			select {
			case entryAns <- append([]byte(nil), body...):
			default:
			}
		case link.FramePacket:
			id, block, err := gateway.ParseDelivery(body)
			if err != nil || id != keys.ID {
				return
			}
			msg, err := keys.OpenReply(block)
			if err != nil {
				return
			}
			session.Parse(msg, func(r session.Record) error {
				if r.Type == session.RecordRegistered {
					select {
					case exitAns <- append([]byte(nil), r.Body...):
					default:
					}
				}
				return nil
			})
		}
	}})
	if err != nil {
		return nil, nil, fmt.Errorf("client: register: link to entry %s: %w", cfg.Entry.ID, err)
	}
	defer c.Close()
	if err := c.SendControl(entryReq); err != nil {
		return nil, nil, fmt.Errorf("client: register with entry: %w", err)
	}
	if err := c.Send(pkt); err != nil {
		return nil, nil, fmt.Errorf("client: register with exit: %w", err)
	}
	for entry == nil || exit == nil {
		select {
		case raw := <-entryAns:
			if entry, err = answer(raw, cfg.Entry.ID); err != nil {
				return nil, nil, err
			}
		case raw := <-exitAns:
			if exit, err = answer(raw, cfg.Exit.ID); err != nil {
				return nil, nil, err
			}
		case <-c.Done():
			return nil, nil, fmt.Errorf("client: register: link to entry %s dropped: %w", cfg.Entry.ID, c.Err())
		case <-ctx.Done():
			missing := cfg.Exit.ID
			if entry == nil {
				missing = cfg.Entry.ID
			}
			return nil, nil, fmt.Errorf("client: register: no answer from %s: %w", missing, ctx.Err())
		}
	}
	return entry, exit, nil
}

func answer(raw []byte, id string) (*register.Response, error) {
	r, err := register.ParseResponse(raw)
	if err != nil {
		return nil, fmt.Errorf("client: registration answer from %s: %w", id, err)
	}
	if r.Error != "" {
		return nil, fmt.Errorf("client: %s refused the registration: %s", id, r.Error)
	}
	return r, nil
}
