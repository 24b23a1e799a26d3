package sphinx

import (
	"bytes"
	"crypto/ecdh"
	"testing"

	"filippo.io/edwards25519"
	"filippo.io/edwards25519/field"
)

func TestEdwardsD(t *testing.T) {
	var num, den, d field.Element
	num.Subtract(new(field.Element).Zero(), feSmall(121665))
	den.Invert(feSmall(121666))
	d.Multiply(&num, &den)
	if d.Equal(edwardsD) != 1 {
		t.Fatalf("d = %x, want %x", edwardsD.Bytes(), d.Bytes())
	}
}

func feSmall(v uint64) *field.Element {
	var b [32]byte
	for i := 0; v > 0; i++ {
		b[i] = byte(v)
		v >>= 8
	}
	e, _ := new(field.Element).SetBytes(b[:])
	return e
}

// blind must agree with X25519: u(c·P) for a clamped scalar c equals
// X25519(c, u(P)) for P in the prime-order subgroup.
func TestBlindMatchesX25519(t *testing.T) {
	rnd := seeded(3)
	for i := 0; i < 50; i++ {
		peer, _ := ecdh.X25519().GenerateKey(rnd)
		var raw [32]byte
		rnd.Read(raw[:])
		priv, err := ecdh.X25519().NewPrivateKey(raw[:])
		if err != nil {
			t.Fatal(err)
		}
		want, err := priv.ECDH(peer.PublicKey())
		if err != nil {
			t.Fatal(err)
		}
		c, _ := new(edwards25519.Scalar).SetBytesWithClamping(raw[:])
		got := make([]byte, 32)
		if err := blind(got, peer.PublicKey().Bytes(), c); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("case %d: blind %x, X25519 %x", i, got, want)
		}
	}
}

func TestPointFromMontgomeryRejectsInvalid(t *testing.T) {
	var p edwards25519.Point
	minusOne := new(field.Element).Subtract(new(field.Element).Zero(), new(field.Element).One()).Bytes()
	if err := pointFromMontgomery(&p, minusOne); err == nil {
		t.Fatal("u = -1 accepted")
	}
	// u = 2 lies on the quadratic twist, not on the curve.
	two := feSmall(2).Bytes()
	if err := pointFromMontgomery(&p, two); err == nil {
		t.Fatal("twist point accepted")
	}
}
