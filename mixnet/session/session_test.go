package session

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"

	"github.com/mixvpn/mixvpn/mixnet/sphinx"
)

func TestBuildParseRoundTrip(t *testing.T) {
	id := ID{1, 2, 3}
	buf := make([]byte, MaxMessageSize)
	var b Builder
	b.Reset(buf, id)
	surb := bytes.Repeat([]byte{0xab}, sphinx.SURBSize)
	v4, v6 := netip.MustParseAddr("10.64.0.7"), netip.MustParseAddr("fd00::7")
	must(t, b.Control(RecordOpen, 41))
	must(t, b.Opened(41, v4, v6))
	must(t, b.SURB(surb))
	must(t, b.Status(12))
	pkt := bytes.Repeat([]byte{0x45}, 300)
	if n := b.Fragment(9, pkt, 0); n != len(pkt) {
		t.Fatalf("fragment took %d of %d", n, len(pkt))
	}
	must(t, b.Control(RecordAck, 77))

	var got []Record
	gotID, err := Parse(b.Bytes(), func(r Record) error { got = append(got, r); return nil })
	must(t, err)
	if gotID != id {
		t.Fatalf("id %x", gotID)
	}
	want := []RecordType{RecordOpen, RecordOpened, RecordSURB, RecordStatus, RecordFragment, RecordAck}
	if len(got) != len(want) {
		t.Fatalf("%d records, want %d", len(got), len(want))
	}
	for i, r := range got {
		if r.Type != want[i] {
			t.Fatalf("record %d type %d, want %d", i, r.Type, want[i])
		}
	}
	if got[0].Seq() != 41 || got[5].Seq() != 77 {
		t.Fatal("sequence numbers changed")
	}
	if seq, a4, a6 := got[1].Opened(); seq != 41 || a4 != v4 || a6 != v6 {
		t.Fatalf("opened %d %v %v", seq, a4, a6)
	}
	if !bytes.Equal(got[2].Body, surb) || got[3].Stock() != 12 {
		t.Fatal("SURB or status changed")
	}
	if p, off, total, data := got[4].Fragment(); p != 9 || off != 0 || total != 300 || !bytes.Equal(data, pkt) {
		t.Fatal("fragment changed")
	}
	// Padding to the full payload size is accepted.
	padded := make([]byte, MaxMessageSize)
	copy(padded, b.Bytes())
	if _, err := Parse(padded, func(Record) error { return nil }); err != nil {
		t.Fatal(err)
	}
}

func TestParseRejects(t *testing.T) {
	var b Builder
	b.Reset(make([]byte, 64), ID{})
	must(t, b.Control(RecordOpen, 1))
	good := bytes.Clone(b.Bytes())
	cases := map[string]struct {
		msg  []byte
		want error
	}{
		"empty":         {nil, ErrShort},
		"version":       {append([]byte{9}, good[1:]...), ErrVersion},
		"unknown type":  {append(bytes.Clone(good[:HeaderSize]), 0x7f, 0, 0), ErrRecordType},
		"short record":  {good[:len(good)-1], ErrShort},
		"wrong size":    {append(bytes.Clone(good[:HeaderSize]), byte(RecordOpen), 0, 3, 1, 2, 3), ErrRecordSize},
		"after padding": {append(bytes.Clone(good), 0, 0, 1), ErrRecordType},
		"too large":     {make([]byte, MaxMessageSize+1), ErrTooLarge},
		"fragment past total": {append(bytes.Clone(good[:HeaderSize]), byte(RecordFragment), 0, 8,
			0, 1, 0, 0, 0, 1, 0xaa, 0xbb), ErrFragment},
	}
	for name, c := range cases {
		delivered := 0
		_, err := Parse(c.msg, func(Record) error { delivered++; return nil })
		if !errors.Is(err, c.want) {
			t.Errorf("%s: got %v, want %v", name, err, c.want)
		}
		if delivered != 0 {
			t.Errorf("%s: %d records delivered from a bad message", name, delivered)
		}
	}
}

func TestFragmentReassemblyOutOfOrder(t *testing.T) {
	rnd := rand.New(rand.NewPCG(1, 2))
	pkt := make([]byte, 5000)
	for i := range pkt {
		pkt[i] = byte(rnd.Uint32())
	}
	// Split across small messages as a busy client would.
	var recs [][]byte
	for off := 0; off < len(pkt); {
		var b Builder
		b.Reset(make([]byte, 600), ID{})
		n := b.Fragment(3, pkt, off)
		if n == 0 {
			t.Fatal("no progress")
		}
		off += n
		recs = append(recs, bytes.Clone(b.Bytes()))
	}
	rnd.Shuffle(len(recs), func(i, j int) { recs[i], recs[j] = recs[j], recs[i] })
	var r Reassembler
	var out []byte
	now := time.Unix(0, 0)
	for i, m := range recs {
		_, err := Parse(m, func(rec Record) error {
			p, off, total, data := rec.Fragment()
			got, err := r.Add(p, off, total, data, now)
			if got != nil {
				if i != len(recs)-1 {
					t.Fatalf("completed after %d of %d fragments", i+1, len(recs))
				}
				out = bytes.Clone(got)
			}
			return err
		})
		must(t, err)
	}
	if !bytes.Equal(out, pkt) {
		t.Fatal("reassembled packet differs")
	}
	if r.Pending() != 0 {
		t.Fatalf("%d pending after completion", r.Pending())
	}
}

func TestReassemblyBounds(t *testing.T) {
	r := Reassembler{MaxPending: 4}
	now := time.Unix(100, 0)
	for i := range 10 {
		if _, err := r.Add(uint16(i), 0, 100, make([]byte, 10), now.Add(time.Duration(i)*time.Second)); err != nil {
			t.Fatal(err)
		}
	}
	if r.Pending() != 4 {
		t.Fatalf("%d pending, want 4", r.Pending())
	}
	if _, err := r.Add(9, 5, 100, make([]byte, 10), now); !errors.Is(err, ErrInconsistent) {
		t.Fatalf("overlap: %v", err)
	}
	if n := r.Expire(now.Add(time.Hour)); n != 3 {
		t.Fatalf("expired %d, want 3", n)
	}
	if _, err := r.Add(1, 95, 100, make([]byte, 10), now); !errors.Is(err, ErrFragment) {
		t.Fatalf("out of bounds: %v", err)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
