package daemon

import (
	"strings"
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
// country code or empty for any, as directory.PickGateway takes it), to
// one gateway ID in doc, picked by pick among those that did not fail
// within avoidFor before now. When every gateway that fits failed lately
// it takes the one that failed longest ago, so that attempts go round
// them rather than back to the last to fail. A gateway pinned by ID is
// kept whatever happened to it: the user asked for that one. A choice doc
// cannot meet comes back as it is, for the tunnel to say why it fails.
func (f failures) choose(doc *directory.Document, role directory.Role, want string, now time.Duration, pick func(n int) int) string {
	if want != "" && doc.ByID(want) != nil {
		return want
	}
	country := ""
	switch {
	case len(want) == 2:
		country = strings.ToUpper(want)
	case want != "":
		return want
	}
	all := doc.GatewaysIn(role, country)
	if len(all) == 0 {
		return want
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
