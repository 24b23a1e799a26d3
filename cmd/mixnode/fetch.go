package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

// fetchOptions are fetch's flags.
type fetchOptions struct {
	// DNS is the server (an IP) names are resolved with; empty for the
	// system's.
	DNS string
	// KV, if set, prints the figures as key=value lines with this prefix.
	KV string
	// Resume asks for the rest of the content with a Range request when
	// the body fails, as a download manager would after a network change.
	Resume bool
	// Stall is how long a resumable download waits for a byte before it
	// gives up on the connection and resumes.
	Stall time.Duration
	// Retries bounds the requests a resumable download makes after its
	// first.
	Retries int
	// Rate is the most bytes per second read from the body; 0 for no
	// limit. It makes a small download last, to watch it across events.
	Rate int64
}

// fetchCommand downloads a URL the way a user's browser would, resolving
// its name with the DNS server given, and checks a /blob/N download
// against the hash the internet host publishes. It is how the demo, the
// end-to-end tests and bench-net measure a tunnel from the client's side.
func fetchCommand() *cobra.Command {
	var o fetchOptions
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "fetch URL",
		Short: "Download a URL, check a blob's hash, print time and goodput",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if o.Rate < 0 || o.Retries < 0 || o.Stall <= 0 {
				return errors.New("fetch: --rate and --retries must not be negative, --stall must be positive")
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			// Resumes are events worth a line each, on stderr so that
			// stdout stays the figures.
			log := slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), nil))
			return fetch(ctx, args[0], o, log)
		},
	}
	cmd.Flags().StringVar(&o.DNS, "dns", "", "DNS server (IP) to resolve names with; default the system's")
	cmd.Flags().StringVar(&o.KV, "kv", "", "print key=value lines with this key prefix")
	cmd.Flags().DurationVar(&timeout, "timeout", 2*time.Minute, "give up after")
	cmd.Flags().BoolVar(&o.Resume, "resume", false, "when the body fails or stalls, ask for the rest with a Range request")
	cmd.Flags().DurationVar(&o.Stall, "stall", 5*time.Second, "with --resume: resume after this long without a byte")
	cmd.Flags().IntVar(&o.Retries, "retries", 20, "with --resume: at most this many requests after the first")
	cmd.Flags().Int64Var(&o.Rate, "rate", 0, "read at most this many bytes per second (0: no limit)")
	return cmd
}

func fetch(ctx context.Context, url string, o fetchOptions, log *slog.Logger) error {
	dialer := &net.Dialer{Timeout: 30 * time.Second}
	if o.DNS != "" {
		dialer.Resolver = &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, net.JoinHostPort(o.DNS, "53"))
		}}
	}
	hc := &http.Client{Transport: &http.Transport{DialContext: dialer.DialContext, DisableKeepAlives: true}}
	res, err := download(ctx, hc, url, o, log)
	if err != nil {
		return fmt.Errorf("fetch: %w", err)
	}
	if strings.Contains(url, "/blob/") && !strings.HasSuffix(url, ".sha256") {
		want, err := blobHash(ctx, hc, url+".sha256", o)
		if err != nil {
			return fmt.Errorf("fetch hash: %w", err)
		}
		if want != res.SHA256 {
			return fmt.Errorf("fetch: %s: hash %s, the server says %s", url, res.SHA256, want)
		}
	}
	mbps := float64(res.Bytes) * 8 / res.Elapsed.Seconds() / 1e6
	if o.KV != "" {
		fmt.Printf("%s_goodput_mbps=%.2f\n%s_fetch_ms=%d\n", o.KV, mbps, o.KV, res.Elapsed.Milliseconds())
		if o.Resume {
			fmt.Printf("%s_resumes=%d\n%s_max_gap_ms=%d\n", o.KV, res.Resumes, o.KV, res.MaxGap.Milliseconds())
		}
		return nil
	}
	var resumes string
	if o.Resume {
		resumes = fmt.Sprintf(", %d resumes, longest gap %v", res.Resumes, res.MaxGap.Round(time.Millisecond))
	}
	fmt.Printf("fetched %s: %d bytes in %v (%.2f Mbit/s), sha256 %s…%s\n", url, res.Bytes, res.Elapsed.Round(time.Millisecond), mbps, res.SHA256[:16], resumes)
	return nil
}

// fetchResult is what a download measured.
type fetchResult struct {
	Bytes   int64
	SHA256  string // hex, of the whole content
	Elapsed time.Duration
	// Resumes counts the requests after the first, whether or not they
	// brought data.
	Resumes int
	// MaxGap is the longest wait for data: from the start to the first
	// byte, or from one byte to the next across failed requests, leaving
	// out the pauses the rate limit made.
	MaxGap time.Duration
}

// errStalled is why a request was given up when no byte came for
// fetchOptions.Stall.
var errStalled = errors.New("stalled")

// fatalError is a failure that asking again would not mend: the server
// refused, or answered a range other than the one asked for.
type fatalError struct{ err error }

func (e fatalError) Error() string { return e.err.Error() }
func (e fatalError) Unwrap() error { return e.err }

// downloader is one download's state across its requests.
type downloader struct {
	hc  *http.Client
	url string
	o   fetchOptions
	log *slog.Logger

	h     hash.Hash
	got   int64 // bytes hashed, the offset to resume from
	total int64 // the content's size; -1 while unknown
	buf   []byte

	res      fetchResult
	waitFrom time.Time // since when the download has waited for data
	next     time.Time // the rate limit allows no read before
	failed   int       // requests failed since the last byte
	cause    error     // the first of those failures
}

// download GETs url and hashes its body; with o.Resume it asks again for
// what is missing when the body fails, until it has all of it, the
// retries are used up, or ctx ends.
func download(ctx context.Context, hc *http.Client, url string, o fetchOptions, log *slog.Logger) (fetchResult, error) {
	d := &downloader{hc: hc, url: url, o: o, log: log, h: sha256.New(), total: -1}
	// Small reads under a rate limit make its pauses short and even.
	d.buf = make([]byte, 32<<10)
	if o.Rate > 0 {
		d.buf = d.buf[:min(int64(len(d.buf)), max(1, o.Rate/20))]
	}
	start := time.Now()
	d.waitFrom = start
	var backoff time.Duration
	for {
		err := d.request(ctx)
		if err == nil {
			break
		}
		var fatal fatalError
		if !o.Resume || errors.As(err, &fatal) || ctx.Err() != nil {
			return d.res, err
		}
		if d.failed == 0 {
			d.cause, backoff = err, 250*time.Millisecond
		}
		d.failed++
		if d.res.Resumes >= o.Retries {
			return d.res, fmt.Errorf("%w (gave up after %d resumes; first failure since the last byte: %v)", err, d.res.Resumes, d.cause)
		}
		d.log.Info("fetch failed, resuming", "offset", d.got, "err", err, "waited", time.Since(d.waitFrom).Round(time.Millisecond))
		// The first request after data goes at once, as an
		// application's reconnect would. A failure after that may come
		// again at once (the tunnel not up yet): wait, longer each
		// time, but never so long that a tunnel back up stays unused.
		if d.failed > 1 {
			if err := sleepCtx(ctx, backoff); err != nil {
				return d.res, err
			}
			backoff = min(2*backoff, 2*time.Second)
		}
		d.res.Resumes++
	}
	d.res.Bytes = d.got
	d.res.SHA256 = hex.EncodeToString(d.h.Sum(nil))
	d.res.Elapsed = time.Since(start)
	return d.res, nil
}

// request makes one GET, from d.got on, and reads its body to the end;
// a nil error means the download is complete.
func (d *downloader) request(ctx context.Context) error {
	rctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	// The watchdog runs while the request waits for the network and
	// stops while the rate limit pauses, so a stall is the network's.
	arm, disarm := func() {}, func() {}
	if d.o.Resume {
		watchdog := time.AfterFunc(d.o.Stall, func() { cancel(errStalled) })
		defer watchdog.Stop()
		arm = func() { watchdog.Reset(d.o.Stall) }
		disarm = func() { watchdog.Stop() }
	}
	failed := func(err error) error {
		if errors.Is(context.Cause(rctx), errStalled) {
			// err only says the request was cancelled, which is ours.
			return fmt.Errorf("%w: no byte for %v", errStalled, d.o.Stall)
		}
		return err
	}
	req, err := http.NewRequestWithContext(rctx, http.MethodGet, d.url, nil)
	if err != nil {
		return fatalError{err}
	}
	if d.got > 0 {
		req.Header.Set("Range", fmt.Sprintf("bytes=%d-", d.got))
	}
	resp, err := d.hc.Do(req)
	if err != nil {
		return failed(err)
	}
	defer resp.Body.Close()
	disarm()
	var skip int64 // bytes the server sends again that were hashed already
	switch {
	case d.got == 0 && resp.StatusCode == http.StatusOK:
		d.total = resp.ContentLength
	case d.got > 0 && resp.StatusCode == http.StatusPartialContent:
		first, size, err := parseContentRange(resp.Header.Get("Content-Range"))
		if err != nil {
			return fatalError{err}
		}
		if first != d.got || d.total >= 0 && size >= 0 && size != d.total {
			return fatalError{fmt.Errorf("asked for bytes %d- of %d, got %q", d.got, d.total, resp.Header.Get("Content-Range"))}
		}
		if d.total < 0 {
			d.total = size
		}
	case d.got > 0 && resp.StatusCode == http.StatusOK:
		// A server that ignores ranges sends it all again.
		skip = d.got
	default:
		return fatalError{fmt.Errorf("GET %s: %s", d.url, resp.Status)}
	}
	for {
		if err := d.pace(ctx); err != nil {
			return err
		}
		arm()
		n, err := resp.Body.Read(d.buf)
		disarm()
		if n > 0 {
			d.limit(n)
			part := d.buf[:n]
			if skip > 0 {
				s := min(skip, int64(n))
				part, skip = part[s:], skip-s
			}
			if len(part) > 0 {
				d.arrived()
				d.h.Write(part)
				d.got += int64(len(part))
			}
		}
		switch {
		case err == io.EOF && (d.total < 0 || d.got >= d.total):
			return nil
		case err == io.EOF:
			return io.ErrUnexpectedEOF
		case err != nil && d.total >= 0 && d.got >= d.total:
			return nil // the connection broke after the last byte
		case err != nil:
			return failed(err)
		}
	}
}

// arrived accounts the arrival of new bytes: the gap they ended, and the
// end of an outage if requests had failed before them. Bytes a server
// sends again are no progress, and do not end a gap.
func (d *downloader) arrived() {
	now := time.Now()
	gap := now.Sub(d.waitFrom)
	d.res.MaxGap = max(d.res.MaxGap, gap)
	if d.failed > 0 {
		d.log.Info("fetch resumed", "offset", d.got, "gap", gap.Round(time.Millisecond), "failed_requests", d.failed, "cause", d.cause)
		d.failed, d.cause = 0, nil
	}
	d.waitFrom = now
}

// limit spaces reads so that n bytes take n/Rate. There is no credit for
// time spent waiting: after an outage the download goes on at the rate,
// not faster to catch up.
func (d *downloader) limit(n int) {
	if d.o.Rate <= 0 {
		return
	}
	if now := time.Now(); d.next.Before(now) {
		d.next = now
	}
	d.next = d.next.Add(time.Duration(float64(n) / float64(d.o.Rate) * float64(time.Second)))
}

// pace waits until the rate limit allows the next read. The wait is not
// part of a gap, unless it falls in an outage (requests have failed and
// no new byte came yet).
func (d *downloader) pace(ctx context.Context) error {
	if wait := time.Until(d.next); wait > 0 {
		if err := sleepCtx(ctx, wait); err != nil {
			return err
		}
		if d.failed == 0 {
			d.waitFrom = time.Now()
		}
	}
	return nil
}

// parseContentRange reads "bytes FIRST-LAST/SIZE"; size is -1 for "*".
func parseContentRange(s string) (first, size int64, err error) {
	spec, ok := strings.CutPrefix(s, "bytes ")
	rng, sz, ok2 := strings.Cut(spec, "/")
	a, _, ok3 := strings.Cut(rng, "-")
	if !ok || !ok2 || !ok3 {
		return 0, 0, fmt.Errorf("bad Content-Range %q", s)
	}
	if first, err = strconv.ParseInt(a, 10, 64); err != nil {
		return 0, 0, fmt.Errorf("bad Content-Range %q: %w", s, err)
	}
	if sz == "*" {
		return first, -1, nil
	}
	if size, err = strconv.ParseInt(sz, 10, 64); err != nil {
		return 0, 0, fmt.Errorf("bad Content-Range %q: %w", s, err)
	}
	return first, size, nil
}

// blobHash GETs a blob's published hash; with o.Resume it tries again,
// each try bounded by o.Stall, as the download would.
func blobHash(ctx context.Context, hc *http.Client, url string, o fetchOptions) (string, error) {
	get := func(ctx context.Context) (string, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return "", err
		}
		resp, err := hc.Do(req)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return "", fatalError{fmt.Errorf("GET %s: %s", url, resp.Status)}
		}
		b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<10))
		return strings.TrimSpace(string(b)), err
	}
	if !o.Resume {
		return get(ctx)
	}
	var err error
	for range o.Retries + 1 {
		tctx, cancel := context.WithTimeout(ctx, o.Stall)
		var sum string
		sum, err = get(tctx)
		cancel()
		var fatal fatalError
		if err == nil || errors.As(err, &fatal) || ctx.Err() != nil {
			return sum, err
		}
		if err := sleepCtx(ctx, 250*time.Millisecond); err != nil {
			return "", err
		}
	}
	return "", err
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
