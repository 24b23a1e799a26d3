package sphinx

// The geometry of every Sphinx packet mixvpn sends. It follows the Nym
// network's sizes (κ = 16, at most 5 hops, 2048-byte payload) so that a
// mixvpn packet is the same length as a NymVPN one. Every size used anywhere
// in the package is derived here and nowhere else.
const (
	// GroupElementSize is the length of an X25519 public value (α).
	GroupElementSize = 32
	// MACSize is the length of the truncated HMAC-SHA256 header tag (γ).
	MACSize = 16
	// AddressSize is the length of a node or client address.
	AddressSize = 32
	// DelaySize is the length of a per-hop delay: nanoseconds, big-endian.
	DelaySize = 8
	// VersionSize is the length of the routing-information version.
	VersionSize = 3
	// FlagSize is the length of the hop flag (forward or final).
	FlagSize = 1
	// IDSize is the length of the message identifier seen by the final hop.
	IDSize = 16
	// MaxHops is the longest path a packet can take.
	MaxHops = 5

	// SlotSize is what one hop consumes from the routing information β:
	// version, flag, next address, delay and the next hop's MAC for a
	// forward hop; version, flag, destination, identifier and zero padding
	// for the final hop. Both layouts have the same size.
	SlotSize = VersionSize + FlagSize + AddressSize + DelaySize + MACSize
	// RoutingInfoSize is the length of β, room for MaxHops slots.
	RoutingInfoSize = MaxHops * SlotSize
	// HeaderSize is α ‖ γ ‖ β.
	HeaderSize = GroupElementSize + MACSize + RoutingInfoSize

	// PayloadSize is the largest message a packet carries.
	PayloadSize = 2048
	// PayloadZeroPrefix is the run of zeros the final hop checks to detect
	// a tampered payload (κ bytes).
	PayloadZeroPrefix = 16
	// PayloadOverhead is the zero prefix plus the one-byte padding marker.
	PayloadOverhead = PayloadZeroPrefix + 1
	// PayloadBlockSize is the encrypted payload as it travels.
	PayloadBlockSize = PayloadSize + PayloadOverhead
	// PacketSize is the length of every packet on the wire: 2413 bytes.
	PacketSize = HeaderSize + PayloadBlockSize
)

// Sizes of the keys and blocks derived per hop and of single-use reply blocks.
const (
	// ReplayTagSize is the length of the tag a mix remembers to drop replays.
	ReplayTagSize = 32
	// LionessKeySize is the key of the wide-block payload cipher: two
	// ChaCha20 keys and two BLAKE2b keys of 32 bytes each.
	LionessKeySize = 4 * 32
	// SURBKeySeedSize is the seed from which the replier's payload key is
	// expanded; the seed travels in the SURB, the expansion never does.
	// κ bytes, the security level of the rest of the packet; at 16 rather
	// than 32 five SURBs with their record headers fit one payload
	// beside a session header instead of four, and replies (downloads)
	// are bounded by how many SURBs the client's send slots can carry.
	SURBKeySeedSize = 16
	// SURBSize is first hop ‖ header ‖ key seed.
	SURBSize = AddressSize + HeaderSize + SURBKeySeedSize

	// headerStreamSize is the keystream XORed over β plus one appended slot.
	headerStreamSize = RoutingInfoSize + SlotSize
	// lionessLeftSize is the narrow half of the Lioness block; it is both
	// a ChaCha20 key and a BLAKE2b-256 output.
	lionessLeftSize = 32
)

// Version is the routing-information version this package writes and accepts.
var Version = [VersionSize]byte{0, 1, 0}
