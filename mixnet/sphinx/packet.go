package sphinx

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdh"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"fmt"
	"io"
	"time"

	"filippo.io/edwards25519"
)

// Address names a node, or a client behind a gateway, in routing
// information.
type Address [AddressSize]byte

// MessageID lets the final recipient match a packet, for example a SURB
// reply to the keys its creator kept.
type MessageID [IDSize]byte

// Hop is one node on a path: where it is, its Sphinx public key for the
// packet's key epoch, and how long it should hold the packet. The final
// hop's delay is ignored.
type Hop struct {
	Address Address
	Key     *ecdh.PublicKey
	Delay   time.Duration
}

// Flag says what a hop does with a packet. Only that hop can read it.
type Flag byte

const (
	// FlagForward: hold the packet for Delay, then send it to NextHop.
	FlagForward Flag = 0
	// FlagFinal: this hop is the recipient; the payload is checked and
	// returned as plaintext (exit gateway, drop cover).
	FlagFinal Flag = 1
	// FlagDeliver: hand the still-encrypted payload to Destination, who
	// opens it with keys it kept (SURB replies and loop cover at the
	// client's entry gateway). The gateway cannot tell replies from loops.
	FlagDeliver Flag = 2
)

// Processed is the outcome of Unwrap. Buffers alias the packet passed in.
type Processed struct {
	Flag Flag
	// ReplayTag is the same for every copy of one packet at one hop.
	ReplayTag [ReplayTagSize]byte

	// For FlagForward.
	NextHop Address
	Delay   time.Duration
	// Packet is the packet for the next hop (FlagForward).
	Packet []byte

	// For FlagFinal and FlagDeliver.
	Destination Address
	ID          MessageID
	// Payload is the message (FlagFinal) or the opaque payload block
	// (FlagDeliver).
	Payload []byte
}

// header is a packet's header viewed in place.
type header struct {
	alpha []byte
	gamma []byte
	beta  []byte
}

func splitHeader(b []byte) header {
	return header{
		alpha: b[:GroupElementSize],
		gamma: b[GroupElementSize : GroupElementSize+MACSize],
		beta:  b[GroupElementSize+MACSize : HeaderSize],
	}
}

// NewPacket builds a forward packet that carries msg along path to
// destination, which the last hop reads with id. rnd supplies the ephemeral
// key and padding; nil means crypto/rand.
func NewPacket(rnd io.Reader, path []Hop, destination Address, id MessageID, msg []byte) ([]byte, error) {
	if len(msg) > PayloadSize {
		return nil, fmt.Errorf("%w: %d > %d bytes", ErrPayloadTooLarge, len(msg), PayloadSize)
	}
	pkt := make([]byte, PacketSize)
	keys, err := buildHeader(pkt[:HeaderSize], rnd, path, FlagFinal, destination, id)
	if err != nil {
		return nil, err
	}
	payload := pkt[HeaderSize:]
	encodePayload(payload, msg)
	for i := len(keys) - 1; i >= 0; i-- {
		lionessEncrypt(&keys[i].payload, payload)
	}
	return pkt, nil
}

// buildHeader writes a header for path into dst and returns each hop's keys.
// It costs two scalar multiplications per hop: the sender keeps the product
// of its ephemeral scalar and every blinding factor so far, and computes
// both α_i and the shared secret from it directly, never re-blinding.
func buildHeader(dst []byte, rnd io.Reader, path []Hop, last Flag, destination Address, id MessageID) ([]hopKeys, error) {
	r := len(path)
	if r < 1 || r > MaxHops {
		return nil, fmt.Errorf("%w: got %d", ErrPathLength, r)
	}
	if rnd == nil {
		rnd = rand.Reader
	}
	var seed [64]byte
	if _, err := io.ReadFull(rnd, seed[:]); err != nil {
		return nil, fmt.Errorf("sphinx: read randomness: %w", err)
	}
	product, err := new(edwards25519.Scalar).SetUniformBytes(seed[:])
	if err != nil {
		return nil, fmt.Errorf("sphinx: ephemeral scalar: %w", err)
	}

	keys := make([]hopKeys, r)
	streams := make([][headerStreamSize]byte, r)
	var alpha0 []byte
	var p, y edwards25519.Point
	for i, hop := range path {
		if hop.Key == nil {
			return nil, fmt.Errorf("%w: hop %d has no key", ErrInvalidKey, i)
		}
		if i == 0 {
			alpha0 = p.ScalarBaseMult(product).BytesMontgomery()
		}
		if err := pointFromMontgomery(&y, hop.Key.Bytes()); err != nil {
			return nil, fmt.Errorf("hop %d: %w", i, err)
		}
		secret := y.ScalarMult(product, &y).BytesMontgomery()
		if err := deriveHopKeys(&keys[i], secret); err != nil {
			return nil, err
		}
		if err := headerStream(streams[i][:], &keys[i]); err != nil {
			return nil, err
		}
		b, err := blindingScalar(keys[i].blinding[:])
		if err != nil {
			return nil, fmt.Errorf("sphinx: blinding scalar: %w", err)
		}
		product.Multiply(product, b)
	}

	// The filler makes the tail of β look, at every hop, like the keystream
	// a real hop would have appended.
	filler := make([]byte, 0, (r-1)*SlotSize)
	for i := 0; i < r-1; i++ {
		filler = append(filler, make([]byte, SlotSize)...)
		xorInto(filler, streams[i][RoutingInfoSize-i*SlotSize:])
	}

	h := splitHeader(dst)
	copy(h.alpha, alpha0)

	// Last hop: its slot, random padding so it cannot count the hops,
	// encrypted, then the filler.
	lastLen := RoutingInfoSize - (r-1)*SlotSize
	writeFinalSlot(h.beta[:SlotSize], last, destination, id)
	if _, err := io.ReadFull(rnd, h.beta[SlotSize:lastLen]); err != nil {
		return nil, fmt.Errorf("sphinx: read padding: %w", err)
	}
	xorInto(h.beta[:lastLen], streams[r-1][:lastLen])
	copy(h.beta[lastLen:], filler)
	mac := headerMAC(&keys[r-1], h.beta)

	// Earlier hops, backwards: prepend a slot and cut one slot off the end.
	for i := r - 2; i >= 0; i-- {
		copy(h.beta[SlotSize:], h.beta[:RoutingInfoSize-SlotSize])
		writeForwardSlot(h.beta[:SlotSize], path[i+1].Address, path[i].Delay, mac[:])
		xorInto(h.beta, streams[i][:RoutingInfoSize])
		mac = headerMAC(&keys[i], h.beta)
	}
	copy(h.gamma, mac[:])
	return keys, nil
}

// Unwrap processes packet at a node holding key. On success out describes
// what to do; for FlagForward out.Packet (the same buffer, rewritten in
// place) goes to out.NextHop after out.Delay. On error the packet must be
// dropped; nothing else is affected.
func Unwrap(key *ecdh.PrivateKey, packet []byte, out *Processed) error {
	if len(packet) != PacketSize {
		return fmt.Errorf("%w: got %d, want %d", ErrPacketSize, len(packet), PacketSize)
	}
	h := splitHeader(packet[:HeaderSize])
	secret, err := sharedSecret(key, h.alpha)
	if err != nil {
		return err
	}
	var k hopKeys
	if err := deriveHopKeys(&k, secret); err != nil {
		return err
	}
	mac := headerMAC(&k, h.beta)
	if !hmac.Equal(mac[:], h.gamma) {
		return ErrBadMAC
	}

	var stream [headerStreamSize]byte
	if err := headerStream(stream[:], &k); err != nil {
		return err
	}
	var slot [SlotSize]byte
	xorInto(slot[:], h.beta[:SlotSize])
	xorInto(slot[:], stream[:SlotSize])
	if [VersionSize]byte(slot[:VersionSize]) != Version {
		return fmt.Errorf("%w: %x", ErrUnknownVersion, slot[:VersionSize])
	}
	flag := Flag(slot[VersionSize])
	body := slot[VersionSize+FlagSize:]

	*out = Processed{Flag: flag, ReplayTag: k.replayTag}
	payload := packet[HeaderSize:]
	switch flag {
	case FlagForward:
		b, err := blindingScalar(k.blinding[:])
		if err != nil {
			return fmt.Errorf("sphinx: blinding scalar: %w", err)
		}
		if err := blind(h.alpha, h.alpha, b); err != nil {
			return err
		}
		copy(out.NextHop[:], body[:AddressSize])
		out.Delay = time.Duration(binary.BigEndian.Uint64(body[AddressSize:]))
		copy(h.gamma, body[AddressSize+DelaySize:])
		// Shift β left by one slot, appending the keystream's tail.
		copy(h.beta, h.beta[SlotSize:])
		clear(h.beta[RoutingInfoSize-SlotSize:])
		xorInto(h.beta, stream[SlotSize:])
		lionessDecrypt(&k.payload, payload)
		out.Packet = packet
		return nil
	case FlagFinal, FlagDeliver:
		copy(out.Destination[:], body[:AddressSize])
		copy(out.ID[:], body[AddressSize:])
		lionessDecrypt(&k.payload, payload)
		if flag == FlagDeliver {
			out.Payload = payload
			return nil
		}
		msg, err := decodePayload(payload)
		if err != nil {
			return err
		}
		out.Payload = msg
		return nil
	default:
		return fmt.Errorf("%w: %d", ErrUnknownFlag, flag)
	}
}

func writeForwardSlot(dst []byte, next Address, delay time.Duration, mac []byte) {
	n := copy(dst, Version[:])
	dst[n] = byte(FlagForward)
	n += FlagSize
	n += copy(dst[n:], next[:])
	if delay < 0 {
		delay = 0
	}
	binary.BigEndian.PutUint64(dst[n:], uint64(delay))
	n += DelaySize
	copy(dst[n:], mac)
}

func writeFinalSlot(dst []byte, flag Flag, destination Address, id MessageID) {
	n := copy(dst, Version[:])
	dst[n] = byte(flag)
	n += FlagSize
	n += copy(dst[n:], destination[:])
	n += copy(dst[n:], id[:])
	clear(dst[n:SlotSize])
}

// headerStream fills dst with the AES-128-CTR keystream (zero IV) for β.
func headerStream(dst []byte, k *hopKeys) error {
	block, err := aes.NewCipher(k.stream[:])
	if err != nil {
		return fmt.Errorf("sphinx: header cipher: %w", err)
	}
	var iv [aes.BlockSize]byte
	clear(dst)
	cipher.NewCTR(block, iv[:]).XORKeyStream(dst, dst)
	return nil
}

// headerMAC is HMAC-SHA256 over β, truncated to MACSize.
func headerMAC(k *hopKeys, beta []byte) [MACSize]byte {
	m := hmac.New(sha256.New, k.mac[:])
	m.Write(beta)
	var sum [sha256.Size]byte
	return [MACSize]byte(m.Sum(sum[:0]))
}

// xorInto XORs src into dst over len(dst) bytes.
func xorInto(dst, src []byte) {
	subtle.XORBytes(dst, dst, src[:len(dst)])
}
