package sphinx

import (
	"crypto/ecdh"
	"testing"
)

// BenchmarkUnwrap is one hop of a 5-hop packet: the cost a mix pays per
// packet. Compare with BenchmarkX25519Pair, the floor of two scalar
// multiplications.
func BenchmarkUnwrap(b *testing.B) {
	rnd := seeded(1)
	nodes := makeNodes(b, rnd, 5)
	pkt, err := NewPacket(rnd, pathOf(nodes), Address{}, MessageID{}, []byte("bench"))
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, PacketSize)
	var out Processed
	b.SetBytes(PacketSize)
	b.ReportAllocs()
	for b.Loop() {
		copy(buf, pkt)
		if err := Unwrap(nodes[0].priv, buf, &out); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkNewPacket builds a 5-hop packet.
func BenchmarkNewPacket(b *testing.B) {
	rnd := seeded(2)
	path := pathOf(makeNodes(b, rnd, 5))
	msg := make([]byte, PayloadSize)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := NewPacket(rnd, path, Address{}, MessageID{}, msg); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkNewSURB builds a 4-hop reply block, as a client does for every
// reply it wants.
func BenchmarkNewSURB(b *testing.B) {
	rnd := seeded(4)
	path := pathOf(makeNodes(b, rnd, 4))
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := NewSURB(rnd, path, Address{}, MessageID{}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkX25519Pair is two crypto/ecdh scalar multiplications with keys
// made outside the loop: what an unwrap cannot go below.
func BenchmarkX25519Pair(b *testing.B) {
	rnd := seeded(3)
	k1, _ := ecdh.X25519().GenerateKey(rnd)
	k2, _ := ecdh.X25519().GenerateKey(rnd)
	p1, p2 := k1.PublicKey(), k2.PublicKey()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := k1.ECDH(p2); err != nil {
			b.Fatal(err)
		}
		if _, err := k2.ECDH(p1); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkLioness is the payload cipher alone, one direction.
func BenchmarkLioness(b *testing.B) {
	var key [LionessKeySize]byte
	block := make([]byte, PayloadBlockSize)
	b.SetBytes(PayloadBlockSize)
	b.ReportAllocs()
	for b.Loop() {
		lionessDecrypt(&key, block)
	}
}
