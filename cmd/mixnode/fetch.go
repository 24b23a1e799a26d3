package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

// fetchCommand downloads a URL the way a user's browser would, resolving
// its name with the DNS server given, and checks a /blob/N download
// against the hash the internet host publishes. It is how the demo, the
// end-to-end tests and bench-net measure a tunnel from the client's side.
func fetchCommand() *cobra.Command {
	var dnsServer string
	var kv string
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "fetch URL",
		Short: "Download a URL, check a blob's hash, print time and goodput",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			return fetch(ctx, args[0], dnsServer, kv)
		},
	}
	cmd.Flags().StringVar(&dnsServer, "dns", "", "DNS server (IP) to resolve names with; default the system's")
	cmd.Flags().StringVar(&kv, "kv", "", "print key=value lines with this key prefix")
	cmd.Flags().DurationVar(&timeout, "timeout", 2*time.Minute, "give up after")
	return cmd
}

func fetch(ctx context.Context, url, dnsServer, kv string) error {
	dialer := &net.Dialer{Timeout: 30 * time.Second}
	if dnsServer != "" {
		dialer.Resolver = &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, net.JoinHostPort(dnsServer, "53"))
		}}
	}
	hc := &http.Client{Transport: &http.Transport{DialContext: dialer.DialContext, DisableKeepAlives: true}}
	get := func(u string) (string, int64, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		if err != nil {
			return "", 0, err
		}
		resp, err := hc.Do(req)
		if err != nil {
			return "", 0, err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return "", 0, fmt.Errorf("GET %s: %s", u, resp.Status)
		}
		h := sha256.New()
		n, err := io.Copy(h, resp.Body)
		return hex.EncodeToString(h.Sum(nil)), n, err
	}
	start := time.Now()
	sum, n, err := get(url)
	if err != nil {
		return fmt.Errorf("fetch: %w", err)
	}
	el := time.Since(start)
	if strings.Contains(url, "/blob/") && !strings.HasSuffix(url, ".sha256") {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url+".sha256", nil)
		if err != nil {
			return err
		}
		resp, err := hc.Do(req)
		if err != nil {
			return fmt.Errorf("fetch hash: %w", err)
		}
		want, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if strings.TrimSpace(string(want)) != sum {
			return fmt.Errorf("fetch: %s: hash %s, the server says %s", url, sum, strings.TrimSpace(string(want)))
		}
	}
	mbps := float64(n) * 8 / el.Seconds() / 1e6
	if kv != "" {
		fmt.Printf("%s_goodput_mbps=%.2f\n%s_fetch_ms=%d\n", kv, mbps, kv, el.Milliseconds())
		return nil
	}
	fmt.Printf("fetched %s: %d bytes in %v (%.2f Mbit/s), sha256 %s…\n", url, n, el.Round(time.Millisecond), mbps, sum[:16])
	return nil
}
