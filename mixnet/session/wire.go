package session

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/mixvpn/mixvpn/mixnet/sphinx"
)

// Version is the protocol version this package speaks.
const Version = 1

// Sizes of the message layout.
const (
	// IDSize is the length of a session identifier.
	IDSize = 16
	// HeaderSize is version ‖ session id.
	HeaderSize = 1 + IDSize
	// RecordHeaderSize is type ‖ 16-bit length.
	RecordHeaderSize = 3
	// FragmentHeaderSize is packet id ‖ offset ‖ total length.
	FragmentHeaderSize = 6
	// MaxMessageSize is what one Sphinx payload carries.
	MaxMessageSize = sphinx.PayloadSize
	// MaxIPPacket is the largest IP packet reassembled.
	MaxIPPacket = 65535
)

// ID identifies a session; clients choose it at random.
type ID [IDSize]byte

// RecordType says what a record carries.
type RecordType byte

// Record types. Control records (Open, Opened, Close, Closed) carry a
// sequence number and are answered; Ack answers a sequence number.
const (
	// RecordOpen (client→exit): seq. Asks for a session and addresses.
	RecordOpen RecordType = 1
	// RecordOpened (exit→client): seq ‖ IPv4 (4) ‖ IPv6 (16).
	RecordOpened RecordType = 2
	// RecordSURB (client→exit): one SURB for the exit's replies.
	RecordSURB RecordType = 3
	// RecordFragment (both ways): packet id ‖ offset ‖ total ‖ bytes.
	RecordFragment RecordType = 4
	// RecordClose (client→exit): seq.
	RecordClose RecordType = 5
	// RecordClosed (exit→client): seq.
	RecordClosed RecordType = 6
	// RecordAck (both ways): seq of a control record received.
	RecordAck RecordType = 7
	// RecordStatus (exit→client): SURBs left in the exit's stock (16 bits).
	RecordStatus RecordType = 8
	// RecordFlush (client→exit): seq. The exit forgets the reply blocks
	// it holds, for they may cross a mix the client now avoids, and acks;
	// SURBs after it in the same message are kept.
	RecordFlush RecordType = 9
	// RecordRegister (client→exit): a Fast-mode registration request
	// (mixnet/register), with a SURB for the answer in the same message.
	// It reaches the exit through the entry, so the exit answers without
	// learning who asked. It opens no session.
	RecordRegister RecordType = 10
	// RecordRegistered (exit→client): the registration response.
	RecordRegistered RecordType = 11
)

// Errors for malformed messages.
var (
	ErrShort        = errors.New("session: message truncated")
	ErrVersion      = errors.New("session: unknown version")
	ErrRecordType   = errors.New("session: unknown record type")
	ErrRecordSize   = errors.New("session: record body has the wrong size")
	ErrFragment     = errors.New("session: fragment out of bounds")
	ErrNoRoom       = errors.New("session: no room left in message")
	ErrTooLarge     = errors.New("session: message larger than a Sphinx payload")
	ErrReassembly   = errors.New("session: reassembly limit reached")
	ErrInconsistent = errors.New("session: fragment disagrees with earlier fragments")
)

// Record is one parsed record. Body aliases the message.
type Record struct {
	Type RecordType
	Body []byte
}

// Seq returns the sequence number of a control or ack record.
func (r Record) Seq() uint32 { return binary.BigEndian.Uint32(r.Body) }

// Opened returns the addresses in a RecordOpened.
func (r Record) Opened() (seq uint32, v4, v6 netip.Addr) {
	return binary.BigEndian.Uint32(r.Body), netip.AddrFrom4([4]byte(r.Body[4:8])), netip.AddrFrom16([16]byte(r.Body[8:24]))
}

// Fragment returns the parts of a RecordFragment.
func (r Record) Fragment() (packet, offset, total uint16, data []byte) {
	b := r.Body
	return binary.BigEndian.Uint16(b), binary.BigEndian.Uint16(b[2:]), binary.BigEndian.Uint16(b[4:]), b[FragmentHeaderSize:]
}

// Stock returns the count in a RecordStatus.
func (r Record) Stock() uint16 { return binary.BigEndian.Uint16(r.Body) }

// bodySize is the fixed body size of a record type, or -1 if it varies.
func bodySize(t RecordType) (int, error) {
	switch t {
	case RecordOpen, RecordClose, RecordClosed, RecordAck, RecordFlush:
		return 4, nil
	case RecordOpened:
		return 4 + 4 + 16, nil
	case RecordSURB:
		return sphinx.SURBSize, nil
	case RecordStatus:
		return 2, nil
	case RecordFragment, RecordRegister, RecordRegistered:
		return -1, nil
	}
	return 0, fmt.Errorf("%w: %d", ErrRecordType, t)
}

// Parse checks a message's header and every record, and calls fn for each
// record in order. Trailing zero bytes are padding. Nothing is delivered if
// any record is malformed, so a bad message loses nothing else.
func Parse(msg []byte, fn func(Record) error) (ID, error) {
	var id ID
	if len(msg) > MaxMessageSize {
		return id, fmt.Errorf("%w: %d bytes", ErrTooLarge, len(msg))
	}
	if len(msg) < HeaderSize {
		return id, fmt.Errorf("%w: %d bytes", ErrShort, len(msg))
	}
	if msg[0] != Version {
		return id, fmt.Errorf("%w: %d", ErrVersion, msg[0])
	}
	copy(id[:], msg[1:HeaderSize])
	if err := walk(msg[HeaderSize:], nil); err != nil {
		return id, err
	}
	return id, walk(msg[HeaderSize:], fn)
}

func walk(b []byte, fn func(Record) error) error {
	for len(b) > 0 {
		if b[0] == 0 { // padding to the end
			for _, c := range b {
				if c != 0 {
					return fmt.Errorf("%w: bytes after padding", ErrRecordType)
				}
			}
			return nil
		}
		if len(b) < RecordHeaderSize {
			return fmt.Errorf("%w: record header", ErrShort)
		}
		t := RecordType(b[0])
		n := int(binary.BigEndian.Uint16(b[1:3]))
		want, err := bodySize(t)
		if err != nil {
			return err
		}
		if len(b) < RecordHeaderSize+n {
			return fmt.Errorf("%w: record of %d bytes", ErrShort, n)
		}
		body := b[RecordHeaderSize : RecordHeaderSize+n]
		if want >= 0 && n != want {
			return fmt.Errorf("%w: type %d with %d bytes", ErrRecordSize, t, n)
		}
		if t == RecordFragment {
			if n < FragmentHeaderSize {
				return fmt.Errorf("%w: fragment of %d bytes", ErrRecordSize, n)
			}
			off := int(binary.BigEndian.Uint16(body[2:]))
			total := int(binary.BigEndian.Uint16(body[4:]))
			if total == 0 || off+n-FragmentHeaderSize > total {
				return fmt.Errorf("%w: offset %d length %d total %d", ErrFragment, off, n-FragmentHeaderSize, total)
			}
		}
		if fn != nil {
			if err := fn(Record{Type: t, Body: body}); err != nil {
				return err
			}
		}
		b = b[RecordHeaderSize+n:]
	}
	return nil
}

// Builder writes one message into a fixed buffer without allocating.
type Builder struct {
	buf []byte
	n   int
}

// Reset starts a message for session id in buf (at least HeaderSize bytes;
// at most MaxMessageSize are used).
func (b *Builder) Reset(buf []byte, id ID) {
	if len(buf) > MaxMessageSize {
		buf = buf[:MaxMessageSize]
	}
	b.buf = buf
	b.buf[0] = Version
	copy(b.buf[1:], id[:])
	b.n = HeaderSize
}

// Len is the message length so far.
func (b *Builder) Len() int { return b.n }

// Limit makes the message end at n bytes, or at the buffer's end if that
// comes first, so that records added next leave the rest for later ones;
// a later Limit moves the end again, up to the buffer's capacity.
func (b *Builder) Limit(n int) {
	b.buf = b.buf[:max(b.n, min(n, cap(b.buf), MaxMessageSize))]
}

// Room is how many body bytes one more record can carry.
func (b *Builder) Room() int {
	r := len(b.buf) - b.n - RecordHeaderSize
	if r < 0 {
		return 0
	}
	return r
}

// Bytes returns the message so far.
func (b *Builder) Bytes() []byte { return b.buf[:b.n] }

func (b *Builder) record(t RecordType, n int) ([]byte, error) {
	if n > b.Room() {
		return nil, fmt.Errorf("%w: %d bytes for type %d, %d free", ErrNoRoom, n, t, b.Room())
	}
	h := b.buf[b.n:]
	h[0] = byte(t)
	binary.BigEndian.PutUint16(h[1:], uint16(n))
	body := h[RecordHeaderSize : RecordHeaderSize+n]
	b.n += RecordHeaderSize + n
	return body, nil
}

// Control adds an Open, Close, Closed or Ack record.
func (b *Builder) Control(t RecordType, seq uint32) error {
	body, err := b.record(t, 4)
	if err != nil {
		return err
	}
	binary.BigEndian.PutUint32(body, seq)
	return nil
}

// Opened adds the exit's answer to an Open.
func (b *Builder) Opened(seq uint32, v4, v6 netip.Addr) error {
	body, err := b.record(RecordOpened, 24)
	if err != nil {
		return err
	}
	binary.BigEndian.PutUint32(body, seq)
	a4, a6 := v4.As4(), v6.As16()
	copy(body[4:], a4[:])
	copy(body[8:], a6[:])
	return nil
}

// Blob adds a record of type t with a body of variable length, such as
// RecordRegister.
func (b *Builder) Blob(t RecordType, data []byte) error {
	body, err := b.record(t, len(data))
	if err != nil {
		return err
	}
	copy(body, data)
	return nil
}

// SURB adds one reply block.
func (b *Builder) SURB(surb []byte) error {
	if len(surb) != sphinx.SURBSize {
		return fmt.Errorf("%w: SURB of %d bytes", ErrRecordSize, len(surb))
	}
	body, err := b.record(RecordSURB, len(surb))
	if err != nil {
		return err
	}
	copy(body, surb)
	return nil
}

// Status adds the exit's SURB stock.
func (b *Builder) Status(stock uint16) error {
	body, err := b.record(RecordStatus, 2)
	if err != nil {
		return err
	}
	binary.BigEndian.PutUint16(body, stock)
	return nil
}

// Fragment adds as much of pkt from offset as fits and returns how many
// bytes it took (0 if not even one byte fits).
func (b *Builder) Fragment(packetID uint16, pkt []byte, offset int) int {
	room := b.Room() - FragmentHeaderSize
	if room <= 0 || len(pkt) > MaxIPPacket || offset >= len(pkt) {
		return 0
	}
	n := min(room, len(pkt)-offset)
	body, _ := b.record(RecordFragment, FragmentHeaderSize+n)
	binary.BigEndian.PutUint16(body, packetID)
	binary.BigEndian.PutUint16(body[2:], uint16(offset))
	binary.BigEndian.PutUint16(body[4:], uint16(len(pkt)))
	copy(body[FragmentHeaderSize:], pkt[offset:offset+n])
	return n
}
