package sphinx

import (
	"crypto/rand"
	"fmt"
	"io"
)

// A single-use reply block lets a recipient answer without learning who or
// where the sender is. The creator keeps SURBKeys; the SURB itself, made of
// the first hop's address, a ready header and a key seed, travels to the
// replier inside a forward payload.

// SURBKeys are what the creator of a SURB keeps to open the reply.
type SURBKeys struct {
	// ID is the identifier the final hop hands over with the reply.
	ID MessageID
	// hops are the payload keys of every hop on the reply path.
	hops [][LionessKeySize]byte
	// replier is the key the replier encrypts the payload with.
	replier [LionessKeySize]byte
}

// NewSURB builds a reply block for path, whose last hop delivers the reply
// to destination (normally the creator's own address at its gateway) under
// id. It returns the SURB bytes (SURBSize) and the keys to keep.
func NewSURB(rnd io.Reader, path []Hop, destination Address, id MessageID) ([]byte, *SURBKeys, error) {
	if len(path) < 1 || len(path) > MaxHops {
		return nil, nil, fmt.Errorf("%w: got %d", ErrPathLength, len(path))
	}
	if rnd == nil {
		rnd = rand.Reader
	}
	surb := make([]byte, SURBSize)
	copy(surb, path[0].Address[:])
	hdr := surb[AddressSize : AddressSize+HeaderSize]
	seed := surb[AddressSize+HeaderSize:]
	keys, err := buildHeader(hdr, rnd, path, FlagDeliver, destination, id)
	if err != nil {
		return nil, nil, err
	}
	if _, err := io.ReadFull(rnd, seed); err != nil {
		return nil, nil, fmt.Errorf("sphinx: read SURB key seed: %w", err)
	}
	replier, err := expandSURBKey(seed)
	if err != nil {
		return nil, nil, err
	}
	kept := &SURBKeys{ID: id, hops: make([][LionessKeySize]byte, len(keys)), replier: *replier}
	for i := range keys {
		kept.hops[i] = keys[i].payload
	}
	return surb, kept, nil
}

// NewReply builds the packet that answers through surb with msg, and the
// address of the first hop to send it to.
func NewReply(surb []byte, msg []byte) (Address, []byte, error) {
	var first Address
	if len(surb) != SURBSize {
		return first, nil, fmt.Errorf("%w: got %d, want %d", ErrSURBSize, len(surb), SURBSize)
	}
	if len(msg) > PayloadSize {
		return first, nil, fmt.Errorf("%w: %d > %d bytes", ErrPayloadTooLarge, len(msg), PayloadSize)
	}
	copy(first[:], surb[:AddressSize])
	key, err := expandSURBKey(surb[AddressSize+HeaderSize:])
	if err != nil {
		return first, nil, err
	}
	pkt := make([]byte, PacketSize)
	copy(pkt, surb[AddressSize:AddressSize+HeaderSize])
	encodePayload(pkt[HeaderSize:], msg)
	lionessEncrypt(key, pkt[HeaderSize:])
	return first, pkt, nil
}

// OpenReply recovers the message from a delivered reply payload block. The
// block is decrypted in place; the returned message aliases it. Keys that
// did not make this SURB yield ErrReplyKeysMismatch.
func (k *SURBKeys) OpenReply(block []byte) ([]byte, error) {
	if len(block) != PayloadBlockSize {
		return nil, fmt.Errorf("%w: payload block of %d bytes", ErrPacketSize, len(block))
	}
	// Every hop decrypted one layer; undo them from the last hop back.
	for i := len(k.hops) - 1; i >= 0; i-- {
		lionessEncrypt(&k.hops[i], block)
	}
	lionessDecrypt(&k.replier, block)
	msg, err := decodePayload(block)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrReplyKeysMismatch, err)
	}
	return msg, nil
}
