package daemon

import (
	"time"

	"github.com/mixvpn/mixvpn/mixnet/directory"
)

// avoidFor is how long a gateway that failed is passed over while the
// user's choice allows another. Long enough that retries, which back off
// to RetryMax, go elsewhere rather than back to a dead gateway; short
// enough that a gateway that came back is soon used again.
const avoidFor = 5 * time.Minute

// failures remembers the gateways that failed lately (a connect attempt
// through them failed, or their tunnel was found dead): gateway ID to the
// monotonic time of its last failure. The daemon keeps one, under mu.
type failures map[string]time.Duration

// add records that the gateways ids (empty ones skipped) failed at now,
// and forgets failures old enough not to count any more.
func (f failures) add(now time.Duration, ids ...string) {
	for id, at := range f {
		if now-at >= avoidFor {
			delete(f, id)
		}
	}
	for _, id := range ids {
		if id != "" {
			f[id] = now
		}
	}
}

// forget clears the gateways ids: a tunnel just came up through them.
func (f failures) forget(ids ...string) {
	for _, id := range ids {
		delete(f, id)
	}
}

// choose narrows want, the user's choice of a gateway of role (an ID, a
// country code or empty for any, read as directory.PickGateway reads it),
// to one gateway ID in doc, picked by pick among those that did not fail
// within avoidFor before now. When every gateway that fits failed lately
// it takes the one that failed longest ago, so that attempts go round
// them rather than back to the last to fail. A gateway pinned by ID is
// kept whatever happened to it: the user asked for that one. A choice doc
// cannot meet comes back as it is, for the tunnel to say why it fails.
//
// usable, if not nil, narrows the gateways further to those the tunnel
// could work through (an exit that provides a resolver, when the user
// named none): a gateway it refuses would only fail the attempt after
// the tunnel was built. If it refuses every gateway that fits, the choice
// is made among them all, so that the attempt fails naming one and what
// it lacks.
func (f failures) choose(doc *directory.Document, role directory.Role, want string, now time.Duration, pick func(n int) int,
	usable func(*directory.Descriptor) bool) string {
	all, err := doc.Candidates(role, want)
	if err != nil {
		return want
	}
	if usable != nil {
		var ok []*directory.Descriptor
		for _, g := range all {
			if usable(g) {
				ok = append(ok, g)
			}
		}
		if len(ok) > 0 {
			all = ok
		}
	}
	var fresh []*directory.Descriptor
	oldest := all[0]
	for _, g := range all {
		at, failed := f[g.ID]
		if !failed || now-at >= avoidFor {
			fresh = append(fresh, g)
		} else if at < f[oldest.ID] {
			oldest = g
		}
	}
	if len(fresh) > 0 {
		return fresh[pick(len(fresh))].ID
	}
	return oldest.ID
}
