// Package sphinx implements the Sphinx packet format (Danezis and Goldberg,
// 2009) with the Nym network's geometry: every packet is PacketSize bytes
// whatever its path length (1 to MaxHops), each hop learns only its own
// routing information, and single-use reply blocks let a recipient answer
// an anonymous sender.
//
// The package is pure: bytes in, bytes out, no I/O, clocks or goroutines.
// Randomness comes from the io.Reader the caller passes. The byte layout and
// key schedule are described in docs/sphinx.md.
//
// An unwrap costs two scalar multiplications: the Diffie-Hellman with the
// node's key through crypto/ecdh, and the blinding of α through
// filippo.io/edwards25519, which unlike X25519 does not compute a throw-away
// public key.
package sphinx
