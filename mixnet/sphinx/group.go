package sphinx

import (
	"bytes"
	"crypto/ecdh"
	"fmt"

	"filippo.io/edwards25519"
	"filippo.io/edwards25519/field"
)

// The group arithmetic Sphinx needs beyond Diffie-Hellman. X25519 keys are
// Montgomery u-coordinates, but blinding α and building a header need scalar
// multiplications by scalars that are not private keys; crypto/ecdh would
// compute a throw-away public key for each (a second multiplication), so we
// map u to an Edwards point and use filippo.io/edwards25519 instead. The map
// loses the sign of x, which is harmless: u(k·P) = u(k·(−P)).

// edwardsD is the twisted Edwards curve constant d = −121665/121666.
var edwardsD = mustElement([]byte{
	0xa3, 0x78, 0x59, 0x13, 0xca, 0x4d, 0xeb, 0x75, 0xab, 0xd8, 0x41, 0x41, 0x4d, 0x0a, 0x70, 0x00,
	0x98, 0xe8, 0x79, 0x77, 0x79, 0x40, 0xc7, 0x8c, 0x73, 0xfe, 0x6f, 0x2b, 0xee, 0x6c, 0x03, 0x52,
})

func mustElement(b []byte) *field.Element {
	e, err := new(field.Element).SetBytes(b)
	if err != nil {
		panic(err)
	}
	return e
}

// pointFromMontgomery returns an Edwards point whose Montgomery
// u-coordinate is u. It costs one square root and no inversion: with
// y = N/D, N = u−1, D = u+1 the curve equation gives
// x² = (N² − D²)/(d·N² + D²), and the point in extended coordinates is
// (x·D : N : D : x·N).
func pointFromMontgomery(p *edwards25519.Point, u []byte) error {
	var fu, one, n, d, n2, d2, num, den, x field.Element
	if _, err := fu.SetBytes(u); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidKey, err)
	}
	one.One()
	n.Subtract(&fu, &one)
	d.Add(&fu, &one)
	if d.Equal(new(field.Element).Zero()) == 1 {
		return fmt.Errorf("%w: u = −1 has no Edwards image", ErrInvalidKey)
	}
	n2.Square(&n)
	d2.Square(&d)
	num.Subtract(&n2, &d2)
	den.Multiply(edwardsD, &n2)
	den.Add(&den, &d2)
	if _, ok := x.SqrtRatio(&num, &den); ok != 1 {
		return fmt.Errorf("%w: not on the curve", ErrInvalidKey)
	}
	var X, T field.Element
	X.Multiply(&x, &d)
	T.Multiply(&x, &n)
	if _, err := p.SetExtendedCoordinates(&X, &n, &d, &T); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidKey, err)
	}
	return nil
}

// blind returns u(b·P) for the point P with u-coordinate alpha: one
// variable-base scalar multiplication.
func blind(dst []byte, alpha []byte, b *edwards25519.Scalar) error {
	var p edwards25519.Point
	if err := pointFromMontgomery(&p, alpha); err != nil {
		return err
	}
	p.ScalarMult(b, &p)
	copy(dst, p.BytesMontgomery())
	return nil
}

// sharedSecret computes the node side of the Diffie-Hellman: one scalar
// multiplication with the node's long-lived key.
// X25519 ignores the top bit of u and reduces u modulo p, so several
// encodings would share one secret; only the canonical one is accepted, or
// a flipped bit in α would go unnoticed.
func sharedSecret(key *ecdh.PrivateKey, alpha []byte) ([]byte, error) {
	var u field.Element
	if _, err := u.SetBytes(alpha); err != nil || !bytes.Equal(u.Bytes(), alpha) {
		return nil, fmt.Errorf("%w: non-canonical encoding", ErrInvalidKey)
	}
	pub, err := ecdh.X25519().NewPublicKey(alpha)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidKey, err)
	}
	s, err := key.ECDH(pub)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidKey, err)
	}
	return s, nil
}

// blindingScalar turns derived key material into the scalar that blinds α
// for the next hop. Clamping mirrors X25519 scalars; the value is reduced
// modulo the group order so sender and node agree on it exactly.
func blindingScalar(material []byte) (*edwards25519.Scalar, error) {
	return new(edwards25519.Scalar).SetBytesWithClamping(material)
}
