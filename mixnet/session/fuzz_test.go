package session

import (
	"testing"
	"time"
)

// FuzzParse is the exit's payload parser: arbitrary bytes from the mixnet
// must give an error or well-formed records, never a panic, and fragments
// that pass Parse must be safe to reassemble.
func FuzzParse(f *testing.F) {
	var b Builder
	b.Reset(make([]byte, MaxMessageSize), ID{7})
	b.Control(RecordOpen, 1)
	b.Fragment(1, make([]byte, 100), 0)
	f.Add(b.Bytes())
	f.Fuzz(func(t *testing.T, msg []byte) {
		var r Reassembler
		_, _ = Parse(msg, func(rec Record) error {
			switch rec.Type {
			case RecordOpen, RecordClose, RecordClosed, RecordAck, RecordFlush:
				_ = rec.Seq()
			case RecordOpened:
				_, _, _ = rec.Opened()
			case RecordStatus:
				_ = rec.Stock()
			case RecordFragment:
				p, off, total, data := rec.Fragment()
				if int(off)+len(data) > int(total) {
					t.Fatalf("Parse passed a fragment past its total")
				}
				_, _ = r.Add(p, off, total, data, time.Unix(0, 0))
			}
			return nil
		})
	})
}
