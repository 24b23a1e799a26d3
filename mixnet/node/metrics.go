package node

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Drop reasons, used as the "reason" label of the drops counter.
const (
	DropOverload   = "overload"   // the unwrap queue was full
	DropStale      = "stale"      // waited too long before unwrap
	DropInvalid    = "invalid"    // failed to unwrap
	DropReplay     = "replay"     // replay tag seen before
	DropSchedule   = "schedule"   // scheduler full
	DropLate       = "late"       // released far past its due time
	DropRole       = "role"       // a hop kind this node's role does not serve
	DropUnroutable = "unroutable" // next hop unknown or its queue full
	DropHandler    = "handler"    // the final-hop handler refused it
)

// Metrics are a node's Prometheus collectors, registered on a registry of
// the caller's so that several nodes can share one process.
type Metrics struct {
	PacketsIn  prometheus.Counter
	PacketsOut *prometheus.CounterVec
	Drops      *prometheus.CounterVec
	QueueDepth prometheus.GaugeFunc
	Delay      prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer, depth func() float64) *Metrics {
	m := &Metrics{
		PacketsIn: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "mixnode_packets_in_total", Help: "Sphinx packets received from links.",
		}),
		PacketsOut: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mixnode_packets_out_total", Help: "Packets sent on, by kind (forward, deliver, final).",
		}, []string{"kind"}),
		Drops: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mixnode_drops_total", Help: "Packets dropped, by reason.",
		}, []string{"reason"}),
		QueueDepth: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "mixnode_queue_depth", Help: "Packets held by the delay scheduler.",
		}, depth),
		Delay: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "mixnode_hold_seconds",
			Help:    "How long forward packets were held, from unwrap to release.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}),
	}
	if reg != nil {
		reg.MustRegister(m.PacketsIn, m.PacketsOut, m.Drops, m.QueueDepth, m.Delay)
	}
	for _, r := range []string{DropOverload, DropStale, DropInvalid, DropReplay, DropSchedule, DropLate, DropRole, DropUnroutable, DropHandler} {
		m.Drops.WithLabelValues(r)
	}
	return m
}
