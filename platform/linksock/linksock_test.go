package linksock

import "testing"

func TestSegmentForDividesTheRecord(t *testing.T) {
	for _, c := range []struct{ record, limit, want int }{
		{2430, 1448, 1215}, // a frame in two segments on Ethernet
		{2430, 1215, 1215},
		{2430, 1208, 810}, // IPv6 at the minimum MTU: three segments
		{2430, 600, 0},    // 486 would be five segments: not worth it
		{1000, 1448, 1000},
		{1009, 1000, 0}, // a prime has no divisor to offer
	} {
		if got := segmentFor(c.record, c.limit); got != c.want {
			t.Errorf("segmentFor(%d, %d) = %d, want %d", c.record, c.limit, got, c.want)
		}
	}
}
