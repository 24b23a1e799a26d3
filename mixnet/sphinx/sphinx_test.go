package sphinx

import (
	"bytes"
	"crypto/ecdh"
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"
)

// testNode is a node's address and key pair.
type testNode struct {
	addr Address
	priv *ecdh.PrivateKey
}

func seeded(seed uint64) *rand.ChaCha8 {
	var s [32]byte
	s[0] = byte(seed)
	s[1] = byte(seed >> 8)
	return rand.NewChaCha8(s)
}

func makeNodes(t testing.TB, rnd *rand.ChaCha8, n int) []testNode {
	t.Helper()
	nodes := make([]testNode, n)
	for i := range nodes {
		// GenerateKey ignores its reader since Go 1.26; seed the key bytes
		// directly so known-answer vectors stay reproducible.
		var raw [32]byte
		rnd.Read(raw[:])
		priv, err := ecdh.X25519().NewPrivateKey(raw[:])
		if err != nil {
			t.Fatal(err)
		}
		rnd.Read(nodes[i].addr[:])
		nodes[i].priv = priv
	}
	return nodes
}

func pathOf(nodes []testNode, delays ...time.Duration) []Hop {
	path := make([]Hop, len(nodes))
	for i, n := range nodes {
		path[i] = Hop{Address: n.addr, Key: n.priv.PublicKey()}
		if i < len(delays) {
			path[i].Delay = delays[i]
		}
	}
	return path
}

func TestRoundTripAllPathLengths(t *testing.T) {
	for hops := 1; hops <= MaxHops; hops++ {
		t.Run(fmt.Sprintf("%d hops", hops), func(t *testing.T) {
			rnd := seeded(uint64(hops))
			nodes := makeNodes(t, rnd, hops)
			delays := []time.Duration{1 * time.Millisecond, 2 * time.Second, 3 * time.Hour, 4, 5}
			var dest Address
			var id MessageID
			rnd.Read(dest[:])
			rnd.Read(id[:])
			msg := []byte(fmt.Sprintf("hello over %d hops", hops))
			pkt, err := NewPacket(rnd, pathOf(nodes, delays...), dest, id, msg)
			if err != nil {
				t.Fatal(err)
			}
			for i, n := range nodes {
				if len(pkt) != PacketSize {
					t.Fatalf("hop %d: packet of %d bytes", i, len(pkt))
				}
				var out Processed
				if err := Unwrap(n.priv, pkt, &out); err != nil {
					t.Fatalf("hop %d: %v", i, err)
				}
				if i < hops-1 {
					if out.Flag != FlagForward {
						t.Fatalf("hop %d: flag %d, want forward", i, out.Flag)
					}
					if out.NextHop != nodes[i+1].addr {
						t.Fatalf("hop %d: next hop %x, want %x", i, out.NextHop, nodes[i+1].addr)
					}
					if out.Delay != delays[i] {
						t.Fatalf("hop %d: delay %v, want %v", i, out.Delay, delays[i])
					}
					pkt = out.Packet
					continue
				}
				if out.Flag != FlagFinal || out.Destination != dest || out.ID != id {
					t.Fatalf("final hop: flag %d dest %x id %x", out.Flag, out.Destination, out.ID)
				}
				if !bytes.Equal(out.Payload, msg) {
					t.Fatalf("final payload %q, want %q", out.Payload, msg)
				}
			}
		})
	}
}

func TestFullAndEmptyPayloads(t *testing.T) {
	rnd := seeded(7)
	nodes := makeNodes(t, rnd, 2)
	for _, msg := range [][]byte{nil, bytes.Repeat([]byte{0}, PayloadSize), bytes.Repeat([]byte{1}, PayloadSize)} {
		pkt, err := NewPacket(rnd, pathOf(nodes), Address{}, MessageID{}, msg)
		if err != nil {
			t.Fatal(err)
		}
		var out Processed
		if err := Unwrap(nodes[0].priv, pkt, &out); err != nil {
			t.Fatal(err)
		}
		if err := Unwrap(nodes[1].priv, out.Packet, &out); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(out.Payload, msg) {
			t.Fatalf("payload of %d bytes came back as %d bytes", len(msg), len(out.Payload))
		}
	}
	if _, err := NewPacket(rnd, pathOf(nodes), Address{}, MessageID{}, make([]byte, PayloadSize+1)); !errors.Is(err, ErrPayloadTooLarge) {
		t.Fatalf("oversized payload: %v", err)
	}
	if _, err := NewPacket(rnd, nil, Address{}, MessageID{}, nil); !errors.Is(err, ErrPathLength) {
		t.Fatalf("empty path: %v", err)
	}
	six := makeNodes(t, rnd, 6)
	if _, err := NewPacket(rnd, pathOf(six), Address{}, MessageID{}, nil); !errors.Is(err, ErrPathLength) {
		t.Fatalf("6-hop path: %v", err)
	}
}

// Each hop can only open its own layer: any other node's key fails the MAC.
func TestHopsLearnOnlyTheirOwnLayer(t *testing.T) {
	rnd := seeded(11)
	nodes := makeNodes(t, rnd, 5)
	pkt, err := NewPacket(rnd, pathOf(nodes), Address{1}, MessageID{2}, []byte("secret"))
	if err != nil {
		t.Fatal(err)
	}
	for i := range nodes {
		for j, other := range nodes {
			if j == i {
				continue
			}
			trial := bytes.Clone(pkt)
			var out Processed
			if err := Unwrap(other.priv, trial, &out); !errors.Is(err, ErrBadMAC) {
				t.Fatalf("hop %d opened by node %d: %v", i, j, err)
			}
		}
		var out Processed
		if err := Unwrap(nodes[i].priv, pkt, &out); err != nil {
			t.Fatal(err)
		}
		if i < len(nodes)-1 {
			if bytes.Contains(out.Packet[HeaderSize:], []byte("secret")) {
				t.Fatalf("payload readable after hop %d", i)
			}
			pkt = out.Packet
		}
	}
}

func TestHeaderBitFlipRejectedAtThatHop(t *testing.T) {
	rnd := seeded(13)
	nodes := makeNodes(t, rnd, 3)
	pkt, err := NewPacket(rnd, pathOf(nodes), Address{}, MessageID{}, []byte("x"))
	if err != nil {
		t.Fatal(err)
	}
	// Move to the second hop so the test covers a header a mix rewrote.
	var out Processed
	if err := Unwrap(nodes[0].priv, pkt, &out); err != nil {
		t.Fatal(err)
	}
	pkt = bytes.Clone(out.Packet)
	for bit := 0; bit < HeaderSize*8; bit++ {
		trial := bytes.Clone(pkt)
		trial[bit/8] ^= 1 << (bit % 8)
		err := Unwrap(nodes[1].priv, trial, &out)
		if err == nil {
			t.Fatalf("bit %d flipped in the header was accepted", bit)
		}
		if !errors.Is(err, ErrBadMAC) && !errors.Is(err, ErrInvalidKey) {
			t.Fatalf("bit %d: unexpected error %v", bit, err)
		}
	}
}

func TestPayloadBitFlipFailsIntegrity(t *testing.T) {
	rnd := seeded(17)
	nodes := makeNodes(t, rnd, 3)
	pkt, err := NewPacket(rnd, pathOf(nodes), Address{}, MessageID{}, []byte("integrity"))
	if err != nil {
		t.Fatal(err)
	}
	bits := []int{0, 7, 8 * 31, 8 * 32, 8*PayloadBlockSize - 1}
	for b := 13; b < 8*PayloadBlockSize; b += 997 {
		bits = append(bits, b)
	}
	for _, bit := range bits {
		trial := bytes.Clone(pkt)
		trial[HeaderSize+bit/8] ^= 1 << (bit % 8)
		var out Processed
		for i, n := range nodes {
			err := Unwrap(n.priv, trial, &out)
			if i < len(nodes)-1 {
				if err != nil {
					t.Fatalf("bit %d: hop %d rejected a payload it cannot check: %v", bit, i, err)
				}
				trial = out.Packet
				continue
			}
			if !errors.Is(err, ErrPayloadIntegrity) {
				t.Fatalf("bit %d: final hop gave %v, want integrity failure", bit, err)
			}
		}
	}
}

func TestReplayTag(t *testing.T) {
	rnd := seeded(19)
	nodes := makeNodes(t, rnd, 2)
	path := pathOf(nodes)
	a, _ := NewPacket(rnd, path, Address{}, MessageID{}, []byte("a"))
	b, _ := NewPacket(rnd, path, Address{}, MessageID{}, []byte("a"))
	var o1, o2, o3 Processed
	a2 := bytes.Clone(a)
	if err := Unwrap(nodes[0].priv, a, &o1); err != nil {
		t.Fatal(err)
	}
	if err := Unwrap(nodes[0].priv, a2, &o2); err != nil {
		t.Fatal(err)
	}
	if err := Unwrap(nodes[0].priv, b, &o3); err != nil {
		t.Fatal(err)
	}
	if o1.ReplayTag != o2.ReplayTag {
		t.Fatal("the same packet gave two replay tags")
	}
	if o1.ReplayTag == o3.ReplayTag {
		t.Fatal("different packets gave the same replay tag")
	}
	if !bytes.Equal(o1.Packet, o2.Packet) {
		t.Fatal("the same packet unwrapped to different bytes")
	}
}

func TestUnwrapWrongSize(t *testing.T) {
	rnd := seeded(23)
	nodes := makeNodes(t, rnd, 1)
	var out Processed
	for _, n := range []int{0, 1, PacketSize - 1, PacketSize + 1} {
		if err := Unwrap(nodes[0].priv, make([]byte, n), &out); !errors.Is(err, ErrPacketSize) {
			t.Fatalf("%d bytes: %v", n, err)
		}
	}
}

func TestSURBRoundTrip(t *testing.T) {
	rnd := seeded(29)
	nodes := makeNodes(t, rnd, 4)
	var client Address
	rnd.Read(client[:])
	var id MessageID
	rnd.Read(id[:])
	surb, keys, err := NewSURB(rnd, pathOf(nodes, 1, 2, 3), client, id)
	if err != nil {
		t.Fatal(err)
	}
	if len(surb) != SURBSize {
		t.Fatalf("SURB of %d bytes", len(surb))
	}
	msg := []byte("the answer, from someone who does not know who asked")
	first, pkt, err := NewReply(surb, msg)
	if err != nil {
		t.Fatal(err)
	}
	if first != nodes[0].addr {
		t.Fatal("reply first hop is not the SURB's first hop")
	}
	if bytes.Contains(pkt, msg) {
		t.Fatal("reply payload is readable by its first hop")
	}
	var out Processed
	for i, n := range nodes {
		if err := Unwrap(n.priv, pkt, &out); err != nil {
			t.Fatalf("hop %d: %v", i, err)
		}
		if i < len(nodes)-1 {
			if out.Delay != time.Duration(i+1) {
				t.Fatalf("hop %d delay %v", i, out.Delay)
			}
			pkt = out.Packet
		}
	}
	if out.Flag != FlagDeliver || out.Destination != client || out.ID != id {
		t.Fatalf("final hop: flag %d dest %x id %x", out.Flag, out.Destination, out.ID)
	}
	if bytes.Contains(out.Payload, msg) {
		t.Fatal("delivering gateway can read the reply")
	}

	// Another SURB's keys cannot open this reply.
	_, otherKeys, err := NewSURB(rnd, pathOf(nodes), client, id)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := otherKeys.OpenReply(bytes.Clone(out.Payload)); !errors.Is(err, ErrReplyKeysMismatch) {
		t.Fatalf("other SURB keys: %v", err)
	}
	got, err := keys.OpenReply(out.Payload)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatalf("reply %q, want %q", got, msg)
	}
}

func TestSURBErrors(t *testing.T) {
	if _, _, err := NewSURB(nil, nil, Address{}, MessageID{}); !errors.Is(err, ErrPathLength) {
		t.Fatalf("empty SURB path: %v", err)
	}
	if _, _, err := NewReply(make([]byte, SURBSize-1), nil); !errors.Is(err, ErrSURBSize) {
		t.Fatalf("short SURB: %v", err)
	}
	if _, _, err := NewReply(make([]byte, SURBSize), make([]byte, PayloadSize+1)); !errors.Is(err, ErrPayloadTooLarge) {
		t.Fatalf("oversized reply: %v", err)
	}
	var k SURBKeys
	if _, err := k.OpenReply(make([]byte, 10)); !errors.Is(err, ErrPacketSize) {
		t.Fatalf("short reply block: %v", err)
	}
}

// The final hop's view of β past its own slot must not reveal how many
// hops came before: it is padding or filler, never zeros.
func TestFinalHopCannotCountHops(t *testing.T) {
	for hops := 1; hops <= MaxHops; hops++ {
		rnd := seeded(uint64(100 + hops))
		nodes := makeNodes(t, rnd, hops)
		pkt, err := NewPacket(rnd, pathOf(nodes), Address{}, MessageID{}, nil)
		if err != nil {
			t.Fatal(err)
		}
		var out Processed
		for i := 0; i < hops-1; i++ {
			if err := Unwrap(nodes[i].priv, pkt, &out); err != nil {
				t.Fatal(err)
			}
			pkt = out.Packet
		}
		// Decrypt β as the final hop does and look past the slot.
		h := splitHeader(pkt[:HeaderSize])
		secret, err := sharedSecret(nodes[hops-1].priv, h.alpha)
		if err != nil {
			t.Fatal(err)
		}
		var k hopKeys
		deriveHopKeys(&k, secret)
		var stream [headerStreamSize]byte
		headerStream(stream[:], &k)
		plain := bytes.Clone(h.beta)
		xorInto(plain, stream[:])
		rest := plain[SlotSize:]
		for off := 0; off+SlotSize <= len(rest); off += SlotSize {
			if bytes.Equal(rest[off:off+SlotSize], make([]byte, SlotSize)) {
				t.Fatalf("%d hops: zero slot at %d past the final slot", hops, off)
			}
		}
	}
}
