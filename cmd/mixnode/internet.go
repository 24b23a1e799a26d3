package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
	"github.com/spf13/cobra"
)

// The "internet" host of the local network: an HTTP server with files of
// known content, an authoritative DNS server for the test zone and a UDP
// echo, so that both modes can be shown carrying TCP, DNS and UDP.

// internetConfig configures the internet host's services.
type internetConfig struct {
	HTTP, DNS, Echo string
	// Zone maps names (fully qualified) to addresses.
	Zone map[string][]netip.Addr
	Log  *slog.Logger
}

// blobSeed makes the downloadable files reproducible: anyone can compute
// their hash with blobSHA256.
var blobSeed = [32]byte{'m', 'i', 'x', 'v', 'p', 'n'}

// blobReader returns n bytes of deterministic content.
func blobReader(n int64) io.Reader {
	return io.LimitReader(rand.NewChaCha8(blobSeed), n)
}

// blobContent is n bytes of blob content as an io.ReadSeeker, so that
// http.ServeContent can answer Range requests and a client can resume a
// download. ChaCha8 cannot jump ahead, so a seek only moves the offset and
// the next Read regenerates the stream up to it (from the start when it
// went back): up to a second of work for the largest blob, which a test
// server can afford.
type blobContent struct {
	n, off int64
	rng    *rand.ChaCha8
	pos    int64 // bytes rng has produced
}

func newBlobContent(n int64) *blobContent {
	return &blobContent{n: n, rng: rand.NewChaCha8(blobSeed)}
}

func (b *blobContent) Read(p []byte) (int, error) {
	if b.off >= b.n {
		return 0, io.EOF
	}
	if b.off < b.pos {
		b.rng, b.pos = rand.NewChaCha8(blobSeed), 0
	}
	if skip := b.off - b.pos; skip > 0 {
		if _, err := io.CopyN(io.Discard, b.rng, skip); err != nil {
			return 0, fmt.Errorf("blob: seeking to %d: %w", b.off, err)
		}
		b.pos = b.off
	}
	p = p[:min(int64(len(p)), b.n-b.off)]
	n, _ := b.rng.Read(p) // ChaCha8 always fills p
	b.off += int64(n)
	b.pos += int64(n)
	return n, nil
}

func (b *blobContent) Seek(offset int64, whence int) (int64, error) {
	switch whence {
	case io.SeekCurrent:
		offset += b.off
	case io.SeekEnd:
		offset += b.n
	case io.SeekStart:
	default:
		return b.off, fmt.Errorf("blob: bad whence %d", whence)
	}
	if offset < 0 {
		return b.off, errors.New("blob: seek before the start")
	}
	b.off = offset
	return offset, nil
}

// blobSHA256 is the hex SHA-256 of the first n bytes of blob content.
func blobSHA256(n int64) string {
	h := sha256.New()
	io.Copy(h, blobReader(n))
	return hex.EncodeToString(h.Sum(nil))
}

func internetHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from the mixvpn local internet; you came from %s\n", r.RemoteAddr)
	})
	// /blob/N serves N bytes of deterministic content, ranges included,
	// so that a client can resume; /blob/N.sha256 is the whole blob's hash.
	mux.HandleFunc("GET /blob/{name}", func(w http.ResponseWriter, r *http.Request) {
		name := r.PathValue("name")
		hashOnly := strings.HasSuffix(name, ".sha256")
		n, err := strconv.ParseInt(strings.TrimSuffix(name, ".sha256"), 10, 64)
		if err != nil || n < 0 || n > 1<<30 {
			http.Error(w, "size must be 0 to 1073741824 bytes", http.StatusBadRequest)
			return
		}
		if hashOnly {
			fmt.Fprintln(w, blobSHA256(n))
			return
		}
		// A type set here spares ServeContent sniffing the content,
		// which would cost a seek back to the start.
		w.Header().Set("Content-Type", "application/octet-stream")
		http.ServeContent(w, r, "", time.Time{}, newBlobContent(n))
	})
	return mux
}

// dnsHandler answers A and AAAA queries from the zone, NXDOMAIN otherwise.
func dnsHandler(zone map[string][]netip.Addr, log *slog.Logger) dns.Handler {
	return dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(q)
		m.Authoritative = true
		for _, question := range q.Question {
			addrs, ok := zone[strings.ToLower(question.Name)]
			log.Info("dns query", "name", question.Name, "type", dns.TypeToString[question.Qtype], "from", w.RemoteAddr().String())
			if !ok {
				m.Rcode = dns.RcodeNameError
				continue
			}
			for _, a := range addrs {
				hdr := dns.RR_Header{Name: question.Name, Class: dns.ClassINET, Ttl: 60}
				switch {
				case question.Qtype == dns.TypeA && a.Is4():
					hdr.Rrtype = dns.TypeA
					m.Answer = append(m.Answer, &dns.A{Hdr: hdr, A: a.AsSlice()})
				case question.Qtype == dns.TypeAAAA && a.Is6():
					hdr.Rrtype = dns.TypeAAAA
					m.Answer = append(m.Answer, &dns.AAAA{Hdr: hdr, AAAA: a.AsSlice()})
				}
			}
		}
		w.WriteMsg(m)
	})
}

// runInternet serves until ctx ends.
func runInternet(ctx context.Context, cfg internetConfig) error {
	log := cfg.Log
	var wg sync.WaitGroup
	errc := make(chan error, 4)
	start := func(name string, serve func() error, stop func()) {
		wg.Add(2)
		go func() {
			defer wg.Done()
			if err := serve(); err != nil && !errors.Is(err, http.ErrServerClosed) && ctx.Err() == nil {
				errc <- fmt.Errorf("%s: %w", name, err)
			}
		}()
		go func() {
			defer wg.Done()
			<-ctx.Done()
			stop()
		}()
	}
	if cfg.HTTP != "" {
		srv := &http.Server{Addr: cfg.HTTP, Handler: internetHandler(), ReadHeaderTimeout: 10 * time.Second}
		start("http", srv.ListenAndServe, func() { srv.Close() })
		log.Info("http listening", "addr", cfg.HTTP)
	}
	if cfg.DNS != "" {
		h := dnsHandler(cfg.Zone, log)
		for _, netw := range []string{"udp", "tcp"} {
			srv := &dns.Server{Addr: cfg.DNS, Net: netw, Handler: h}
			start("dns/"+netw, srv.ListenAndServe, func() { srv.Shutdown() })
		}
		log.Info("dns listening", "addr", cfg.DNS)
	}
	if cfg.Echo != "" {
		pc, err := net.ListenPacket("udp", cfg.Echo)
		if err != nil {
			return fmt.Errorf("udp echo: %w", err)
		}
		start("echo", func() error { return udpEcho(pc) }, func() { pc.Close() })
		log.Info("udp echo listening", "addr", cfg.Echo)
	}
	select {
	case <-ctx.Done():
	case err := <-errc:
		wg.Wait()
		return err
	}
	wg.Wait()
	return nil
}

func udpEcho(pc net.PacketConn) error {
	buf := make([]byte, 65535)
	for {
		n, addr, err := pc.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		pc.WriteTo(buf[:n], addr)
	}
}

func internetCommand(log func() *slog.Logger) *cobra.Command {
	var cfg internetConfig
	var names []string
	cmd := &cobra.Command{
		Use:   "internet",
		Short: "Run the local network's internet host: HTTP, DNS and UDP echo",
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg.Log = log()
			zone, err := parseZone(names)
			if err != nil {
				return err
			}
			cfg.Zone = zone
			return runInternet(cmd.Context(), cfg)
		},
	}
	cmd.Flags().StringVar(&cfg.HTTP, "http", ":80", "HTTP listen address")
	cmd.Flags().StringVar(&cfg.DNS, "dns", ":53", "DNS listen address (UDP and TCP)")
	cmd.Flags().StringVar(&cfg.Echo, "echo", ":7", "UDP echo listen address")
	cmd.Flags().StringSliceVar(&names, "name", nil, "zone entry NAME=ADDR (repeatable)")
	return cmd
}

// parseZone turns NAME=ADDR entries into a zone map of fully-qualified names.
func parseZone(entries []string) (map[string][]netip.Addr, error) {
	zone := make(map[string][]netip.Addr)
	for _, e := range entries {
		name, addr, ok := strings.Cut(e, "=")
		if !ok {
			return nil, fmt.Errorf("zone entry %q: want NAME=ADDR", e)
		}
		a, err := netip.ParseAddr(addr)
		if err != nil {
			return nil, fmt.Errorf("zone entry %q: %w", e, err)
		}
		fq := dns.Fqdn(strings.ToLower(name))
		zone[fq] = append(zone[fq], a)
	}
	return zone, nil
}
