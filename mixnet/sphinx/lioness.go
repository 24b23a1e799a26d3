package sphinx

import (
	"crypto/subtle"

	"golang.org/x/crypto/blake2b"
	"golang.org/x/crypto/chacha20"
)

// Lioness (Anderson and Biham) is a wide-block cipher: a four-round Feistel
// network over the whole payload, with ChaCha20 as the stream cipher and
// keyed BLAKE2b-256 as the hash. Changing any bit of a ciphertext scrambles
// the whole plaintext, so a mix that tags a payload destroys it instead of
// flipping a bit it could recognise later. The block is L (32 bytes) ‖ R.

var zeroNonce [chacha20.NonceSize]byte

func lionessEncrypt(key *[LionessKeySize]byte, block []byte) {
	l, r := block[:lionessLeftSize], block[lionessLeftSize:]
	lionessStream(r, l, key[0:32])
	lionessHash(l, r, key[32:64])
	lionessStream(r, l, key[64:96])
	lionessHash(l, r, key[96:128])
}

func lionessDecrypt(key *[LionessKeySize]byte, block []byte) {
	l, r := block[:lionessLeftSize], block[lionessLeftSize:]
	lionessHash(l, r, key[96:128])
	lionessStream(r, l, key[64:96])
	lionessHash(l, r, key[32:64])
	lionessStream(r, l, key[0:32])
}

// lionessStream XORs r with ChaCha20 keyed by l ⊕ k.
func lionessStream(r, l, k []byte) {
	var rk [chacha20.KeySize]byte
	subtle.XORBytes(rk[:], l, k)
	c, err := chacha20.NewUnauthenticatedCipher(rk[:], zeroNonce[:])
	if err != nil {
		panic("sphinx: chacha20 rejected a fixed-size key: " + err.Error())
	}
	c.XORKeyStream(r, r)
}

// lionessHash XORs l with BLAKE2b-256 of r keyed by k.
func lionessHash(l, r, k []byte) {
	h, err := blake2b.New256(k)
	if err != nil {
		panic("sphinx: blake2b rejected a fixed-size key: " + err.Error())
	}
	h.Write(r)
	var sum [blake2b.Size256]byte
	subtle.XORBytes(l, l, h.Sum(sum[:0]))
}
