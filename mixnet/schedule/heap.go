package schedule

// entry is a held item: due is nanoseconds past the scheduler's base time
// and seq the arrival order, which breaks ties so equal due times leave
// first in, first out.
type entry[T any] struct {
	due  int64
	seq  uint64
	item T
}

// entries is a binary min-heap by (due, seq). It is written out for the
// element type rather than going through container/heap, whose interface
// boxes every pushed and popped element.
type entries[T any] []entry[T]

func (h entries[T]) less(i, j int) bool {
	if h[i].due != h[j].due {
		return h[i].due < h[j].due
	}
	return h[i].seq < h[j].seq
}

// push adds e and returns the index it settled at; 0 means it is now the
// earliest.
func (h *entries[T]) push(e entry[T]) int {
	*h = append(*h, e)
	s := *h
	i := len(s) - 1
	for i > 0 {
		p := (i - 1) / 2
		if !s.less(i, p) {
			break
		}
		s[i], s[p] = s[p], s[i]
		i = p
	}
	return i
}

// pop removes and returns the earliest entry; the heap must not be empty.
func (h *entries[T]) pop() entry[T] {
	s := *h
	n := len(s) - 1
	top := s[0]
	s[0] = s[n]
	s[n] = entry[T]{} // drop the reference to the item's buffer
	s = s[:n]
	i := 0
	for {
		l := 2*i + 1
		if l >= n {
			break
		}
		c := l
		if r := l + 1; r < n && s.less(r, l) {
			c = r
		}
		if !s.less(c, i) {
			break
		}
		s[i], s[c] = s[c], s[i]
		i = c
	}
	*h = s
	return top
}
