package main

import (
	"context"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/mixvpn/mixvpn/tunnel/control"
	pb "github.com/mixvpn/mixvpn/tunnel/control/controlpb"
)

func (c *cli) statsCommand() *cobra.Command {
	var watch, asJSON bool
	var interval time.Duration
	cmd := &cobra.Command{
		Use:   "stats [--watch] [--json]",
		Short: "Show the tunnel's traffic, latency and, in Anonymous mode, cover traffic, loops and reply blocks",
		Long: "Show the tunnel's counters since it connected: bytes and rates both ways and,\n" +
			"in Fast mode, the age of the WireGuard handshakes; in Anonymous mode the loop\n" +
			"round trip, real and cover packets, loops and reply blocks (SURBs).\n" +
			"Rates are over --interval: without --watch, mixvpn takes two samples that far\n" +
			"apart; with --watch it prints one every interval until interrupted.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return c.stats(cmd.Context(), watch, asJSON, interval)
		},
	}
	cmd.Flags().BoolVar(&watch, "watch", false, "print a sample every interval until interrupted")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON (one object per line with --watch)")
	cmd.Flags().DurationVar(&interval, "interval", time.Second, "time between samples, 100ms to 1h")
	return cmd
}

func (c *cli) stats(ctx context.Context, watch, asJSON bool, interval time.Duration) error {
	client, closeFn, err := c.client(ctx)
	if err != nil {
		return err
	}
	defer closeFn()
	streamCtx := ctx
	if !watch {
		var cancel context.CancelFunc
		streamCtx, cancel = context.WithTimeout(ctx, callTimeout+interval)
		defer cancel()
	}
	// The daemon checks the interval and says what is wrong with it.
	stream, err := client.WatchStats(streamCtx, &pb.WatchStatsRequest{IntervalMs: uint32(min(max(interval.Milliseconds(), 0), 1<<32-1))})
	if err != nil {
		return c.explain(err)
	}
	for n := 0; ; n++ {
		msg, err := stream.Recv()
		if watch && ctx.Err() != nil {
			return nil // interrupted: the normal way out
		}
		if err != nil {
			return c.explain(err)
		}
		s := control.StatsFromProto(msg)
		// The first sample has nothing to take a rate from.
		hasRates := n > 0
		switch {
		case !watch && !hasRates:
			continue
		case asJSON:
			if err := writeJSON(c.out, toStatsJSON(s, hasRates)); err != nil {
				return err
			}
		case watch:
			fmt.Fprintln(c.out, statsLine(s, hasRates))
		default:
			writeStats(c.out, s)
		}
		if !watch {
			return nil
		}
	}
}

// writeStats prints one sample in full, for a person.
func writeStats(w io.Writer, s control.StatsSample) {
	if s.Mode == control.ModeUnspecified {
		fmt.Fprintln(w, "Not connected: there is no tunnel to count.")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 1, ' ', 0)
	fmt.Fprintf(tw, "Mode:\t%s\n", s.Mode)
	fmt.Fprintf(tw, "Received:\t%s (%s/s)\n", bytesText(float64(s.BytesIn)), bytesText(s.RateIn))
	fmt.Fprintf(tw, "Sent:\t%s (%s/s)\n", bytesText(float64(s.BytesOut)), bytesText(s.RateOut))
	switch s.Mode {
	case control.ModeFast:
		fmt.Fprintf(tw, "Handshake:\t%s\n", handshakeText(s.LastHandshake, s.Time))
	case control.ModeAnonymous:
		fmt.Fprintf(tw, "Round trip:\t%s mean, %s median, %s p90 (loops through the mixnet)\n",
			latencyText(s.Latency), latencyText(s.LoopRTTP50), latencyText(s.LoopRTTP90))
		fmt.Fprintf(tw, "Packets:\t%d real, %d cover (%s cover)\n", s.RealPackets, s.CoverPackets, coverShare(s.Stats))
		fmt.Fprintf(tw, "Loops:\t%d sent, %d returned, %d lost\n", s.LoopsSent, s.LoopsReturned, s.LoopsLost)
		fmt.Fprintf(tw, "SURBs:\t%d sent, %d used, about %d in stock at the exit\n", s.SURBsMade, s.SURBsUsed, s.SURBStock)
	}
	tw.Flush()
}

// statsLine is a sample on one line, for --watch.
func statsLine(s control.StatsSample, hasRates bool) string {
	at := s.Time.Format("15:04:05")
	if s.Mode == control.ModeUnspecified {
		return at + "  not connected"
	}
	rate := func(r float64) string {
		if !hasRates {
			return "-"
		}
		return bytesText(r) + "/s"
	}
	line := fmt.Sprintf("%s  %s  in %s  out %s", at, s.Mode, rate(s.RateIn), rate(s.RateOut))
	switch s.Mode {
	case control.ModeFast:
		line += "  handshake " + handshakeText(s.LastHandshake, s.Time)
	case control.ModeAnonymous:
		line += fmt.Sprintf("  rtt %s  cover %s  loops lost %d  surbs ~%d", latencyText(s.Latency), coverShare(s.Stats), s.LoopsLost, s.SURBStock)
	}
	return line
}

// statsJSON is a sample for scripts; rates are left out of the first
// sample of a watch, which has none.
type statsJSON struct {
	Time          string   `json:"time"`
	Mode          string   `json:"mode"`
	BytesIn       uint64   `json:"bytes_in"`
	BytesOut      uint64   `json:"bytes_out"`
	BytesInPerS   *float64 `json:"bytes_in_per_s,omitempty"`
	BytesOutPerS  *float64 `json:"bytes_out_per_s,omitempty"`
	LatencyMs     *float64 `json:"latency_ms,omitempty"`
	LastHandshake string   `json:"last_handshake,omitempty"`
	RealPackets   uint64   `json:"real_packets"`
	CoverPackets  uint64   `json:"cover_packets"`
	LoopsSent     uint64   `json:"loops_sent"`
	LoopsReturned uint64   `json:"loops_returned"`
	LoopsLost     uint64   `json:"loops_lost"`
	LoopRTTP50Ms  *float64 `json:"loop_rtt_p50_ms,omitempty"`
	LoopRTTP90Ms  *float64 `json:"loop_rtt_p90_ms,omitempty"`
	SURBsSent     uint64   `json:"surbs_sent"`
	SURBsUsed     uint64   `json:"surbs_used"`
	SURBsInStock  uint64   `json:"surbs_in_stock"`
}

func toStatsJSON(s control.StatsSample, hasRates bool) statsJSON {
	ms := func(d time.Duration) *float64 {
		if d <= 0 {
			return nil
		}
		v := float64(d.Microseconds()) / 1000
		return &v
	}
	v := statsJSON{
		Time: s.Time.Format(time.RFC3339Nano), Mode: s.Mode.String(), BytesIn: s.BytesIn, BytesOut: s.BytesOut,
		LatencyMs: ms(s.Latency), RealPackets: s.RealPackets, CoverPackets: s.CoverPackets,
		LoopsSent: s.LoopsSent, LoopsReturned: s.LoopsReturned, LoopsLost: s.LoopsLost,
		LoopRTTP50Ms: ms(s.LoopRTTP50), LoopRTTP90Ms: ms(s.LoopRTTP90),
		SURBsSent: s.SURBsMade, SURBsUsed: s.SURBsUsed, SURBsInStock: s.SURBStock,
	}
	if s.Mode == control.ModeUnspecified {
		v.Mode = "none"
	}
	if hasRates {
		in, out := s.RateIn, s.RateOut
		v.BytesInPerS, v.BytesOutPerS = &in, &out
	}
	if !s.LastHandshake.IsZero() {
		v.LastHandshake = s.LastHandshake.Format(time.RFC3339Nano)
	}
	return v
}

// bytesText is a byte count in binary units.
func bytesText(b float64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB"}
	i := 0
	for b >= 1024 && i < len(units)-1 {
		b /= 1024
		i++
	}
	if i == 0 {
		return fmt.Sprintf("%.0f %s", b, units[i])
	}
	return fmt.Sprintf("%.1f %s", b, units[i])
}

func handshakeText(at, now time.Time) string {
	if at.IsZero() {
		return "none yet"
	}
	return fmt.Sprintf("%s ago", max(now.Sub(at), 0).Round(time.Second))
}

// coverShare is the part of the packets sent that were cover.
func coverShare(s control.Stats) string {
	total := s.RealPackets + s.CoverPackets
	if total == 0 {
		return "-"
	}
	return fmt.Sprintf("%.0f%%", 100*float64(s.CoverPackets)/float64(total))
}
