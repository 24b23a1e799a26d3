package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/mixvpn/mixvpn/mixnet/directory"
	"github.com/mixvpn/mixvpn/mixnet/gateway"
	"github.com/mixvpn/mixvpn/mixnet/link"
	"github.com/mixvpn/mixvpn/mixnet/session"
	"github.com/mixvpn/mixvpn/mixnet/sphinx"
)

// probe sends session-opening packets through entry, three mixes and an
// exit, each with a reply block, and times the answers: a smoke test of a
// running network that needs no client daemon.
type probeOptions struct {
	Directory string
	Key       string
	WaitReady int
	Packets   int
	MeanDelay time.Duration
	// KV prints the figures as key=value lines for make bench-net.
	KV bool
}

func probeCommand() *cobra.Command {
	var o probeOptions
	cmd := &cobra.Command{
		Use:   "probe",
		Short: "Send probe packets through a running network and report round trips",
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runProbe(cmd.Context(), o)
		},
	}
	cmd.Flags().StringVar(&o.Directory, "directory", "", "directory URL")
	cmd.Flags().StringVar(&o.Key, "key", "", "directory key (base64 ed25519)")
	cmd.Flags().IntVar(&o.WaitReady, "ready", 0, "only check that the directory and every node in it see N nodes")
	cmd.Flags().IntVar(&o.Packets, "packets", 100, "probe packets to send")
	cmd.Flags().DurationVar(&o.MeanDelay, "mean-delay", 15*time.Millisecond, "mean per-mix delay")
	cmd.Flags().BoolVar(&o.KV, "kv", false, "print figures as key=value lines")
	return cmd
}

func runProbe(ctx context.Context, o probeOptions) error {
	key, err := base64.StdEncoding.DecodeString(o.Key)
	if err != nil || len(key) != ed25519.PublicKeySize {
		return errors.New("--key must be a base64 ed25519 public key")
	}
	f := &directory.Fetcher{URL: o.Directory, Key: key}
	doc, err := f.Fetch(ctx)
	if err != nil {
		return err
	}
	if o.WaitReady > 0 {
		if len(doc.Nodes) != o.WaitReady {
			return fmt.Errorf("directory lists %d of %d nodes", len(doc.Nodes), o.WaitReady)
		}
		for _, d := range doc.Nodes {
			if got := scrapeCounter(d.Address, "mixnode_directory_nodes"); got != fmt.Sprint(o.WaitReady) {
				return fmt.Errorf("%s sees %s of %d nodes", d.ID, got, o.WaitReady)
			}
		}
		return nil
	}
	rnd := rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
	pick := func(ds []*directory.Descriptor) (*directory.Descriptor, error) {
		if len(ds) == 0 {
			return nil, errors.New("the directory lacks a node of some role or layer")
		}
		return ds[rnd.IntN(len(ds))], nil
	}
	hopOf := func(d *directory.Descriptor, delay time.Duration) (sphinx.Hop, error) {
		k, err := d.SphinxKey(doc.Epoch)
		return sphinx.Hop{Address: d.MixAddress(), Key: k, Delay: delay}, err
	}
	entry, err := pick(doc.NodesOf(directory.RoleEntry, 0))
	if err != nil {
		return err
	}
	clientKey, err := link.GenerateKey()
	if err != nil {
		return err
	}
	me := gateway.ClientAddress(clientKey.Public)

	type pending struct {
		keys *sphinx.SURBKeys
		sent time.Time
	}
	var mu sync.Mutex
	inflight := map[sphinx.MessageID]pending{}
	var rtts []time.Duration
	done := make(chan struct{})
	c, err := link.Dial(ctx, entry.Address, entry.LinkPublicKey(), link.Config{Static: clientKey, Handler: func(_ *link.Conn, t link.FrameType, body []byte) {
		if t != link.FramePacket {
			return
		}
		id, block, err := gateway.ParseDelivery(body)
		if err != nil {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		p, ok := inflight[id]
		if !ok {
			return
		}
		delete(inflight, id)
		if _, err := p.keys.OpenReply(block); err == nil {
			rtts = append(rtts, time.Since(p.sent))
		}
		if len(rtts) == o.Packets {
			close(done)
		}
	}})
	if err != nil {
		return err
	}
	defer c.Close()
	fmt.Printf("probe: connected to entry %s; sending %d packets entry → mix → mix → mix → exit, replies back on SURBs\n", entry.ID, o.Packets)

	start := time.Now()
	for i := range o.Packets {
		var path, back []sphinx.Hop
		var ids []string
		for _, spec := range []struct {
			role  directory.Role
			layer int
		}{{directory.RoleEntry, 0}, {directory.RoleMix, 1}, {directory.RoleMix, 2}, {directory.RoleMix, 3}, {directory.RoleExit, 0}} {
			d := entry
			if spec.role != directory.RoleEntry {
				if d, err = pick(doc.NodesOf(spec.role, spec.layer)); err != nil {
					return err
				}
			}
			delay := time.Duration(0)
			if spec.role == directory.RoleMix {
				delay = time.Duration(rnd.ExpFloat64() * float64(o.MeanDelay))
			}
			h, err := hopOf(d, delay)
			if err != nil {
				return err
			}
			path = append(path, h)
			ids = append(ids, d.ID)
			if spec.role == directory.RoleMix {
				h.Delay = time.Duration(rnd.ExpFloat64() * float64(o.MeanDelay))
				back = append(back, h)
			}
		}
		eh, _ := hopOf(entry, 0)
		back = append(back, eh)
		var id sphinx.MessageID
		rnd.Uint64()
		for j := range id {
			id[j] = byte(rnd.Uint32())
		}
		surb, keys, err := sphinx.NewSURB(nil, back, me, id)
		if err != nil {
			return err
		}
		var b session.Builder
		var sid session.ID
		copy(sid[:], id[:])
		b.Reset(make([]byte, session.MaxMessageSize), sid)
		b.Control(session.RecordOpen, uint32(i))
		b.SURB(surb)
		pkt, err := sphinx.NewPacket(nil, path, sphinx.Address{}, sphinx.MessageID{}, b.Bytes())
		if err != nil {
			return err
		}
		mu.Lock()
		inflight[id] = pending{keys: keys, sent: time.Now()}
		mu.Unlock()
		if i == 0 {
			fmt.Printf("probe: first route %s\n", strings.Join(ids, " → "))
		}
		if err := c.Send(pkt); err != nil {
			return err
		}
		time.Sleep(2 * time.Millisecond)
	}
	select {
	case <-done:
	case <-time.After(15 * time.Second):
	case <-ctx.Done():
	}
	mu.Lock()
	got := slices.Clone(rtts)
	mu.Unlock()
	slices.Sort(got)
	fmt.Printf("probe: %d of %d answered in %v\n", len(got), o.Packets, time.Since(start).Round(time.Millisecond))
	if len(got) > 0 {
		var sum time.Duration
		for _, r := range got {
			sum += r
		}
		fmt.Printf("probe: round trip mean %v, p50 %v, p90 %v (6 mix delays of mean %v: model %v plus processing)\n",
			(sum / time.Duration(len(got))).Round(time.Millisecond), got[len(got)/2].Round(time.Millisecond),
			got[len(got)*9/10].Round(time.Millisecond), o.MeanDelay, 6*o.MeanDelay)
	}
	if o.KV && len(got) > 0 {
		var sum time.Duration
		for _, r := range got {
			sum += r
		}
		ms := func(d time.Duration) string { return fmt.Sprintf("%.1f", float64(d)/float64(time.Millisecond)) }
		fmt.Printf("mix_probe_answered=%d\nmix_probe_sent=%d\n", len(got), o.Packets)
		fmt.Printf("mix_probe_rtt_ms=%s\nmix_probe_rtt_p50_ms=%s\nmix_probe_rtt_p90_ms=%s\nmix_probe_model_rtt_ms=%s\n",
			ms(sum/time.Duration(len(got))), ms(got[len(got)/2]), ms(got[len(got)*9/10]), ms(6*o.MeanDelay))
		return nil
	}
	fmt.Println("probe: packets each node processed (mixnode_packets_in_total):")
	for _, d := range doc.Nodes {
		fmt.Printf("  %-8s %-6s %s\n", d.ID, d.Role, scrapeCounter(d.Address, "mixnode_packets_in_total"))
	}
	if len(got) < o.Packets*9/10 {
		return fmt.Errorf("probe: only %d of %d packets came back", len(got), o.Packets)
	}
	return nil
}

// scrapeCounter reads one metric from a node's metrics endpoint, which the
// local network puts on port 9100 of the node's address.
func scrapeCounter(linkAddr, name string) string {
	host := linkAddr[:strings.LastIndex(linkAddr, ":")]
	client := &http.Client{Timeout: 2 * time.Second}
	resp, err := client.Get("http://" + host + ":9100/metrics")
	if err != nil {
		return "?"
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Bytes()
		if bytes.HasPrefix(line, []byte(name+" ")) {
			return string(bytes.TrimPrefix(line, []byte(name+" ")))
		}
	}
	return "?"
}
