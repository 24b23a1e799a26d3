package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// cutWriter passes a response through until limit body bytes, sends
// them and then breaks the connection, as a reset in the network would.
type cutWriter struct {
	http.ResponseWriter
	limit int
}

func (c *cutWriter) Write(p []byte) (int, error) {
	if len(p) < c.limit {
		c.limit -= len(p)
		return c.ResponseWriter.Write(p)
	}
	c.ResponseWriter.Write(p[:c.limit])
	c.ResponseWriter.(http.Flusher).Flush()
	panic(http.ErrAbortHandler) // the server closes the connection, no more
}

// rangeLog records the Range headers a test server saw.
type rangeLog struct {
	mu     sync.Mutex
	ranges []string
}

func (l *rangeLog) add(r *http.Request) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.ranges = append(l.ranges, r.Header.Get("Range"))
	return len(l.ranges)
}

func (l *rangeLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return fmt.Sprintf("%q", l.ranges)
}

func testDownload(t *testing.T, url string, o fetchOptions) (fetchResult, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	hc := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	return download(ctx, hc, url, o, slog.New(slog.NewTextHandler(t.Output(), nil)))
}

// TestFetchResumesAfterCuts: every connection breaks 40000 bytes into its
// body; the download asks for the rest each time, from the right offset,
// and the whole hashes right.
func TestFetchResumesAfterCuts(t *testing.T) {
	const size, cut = 200000, 40000
	var log rangeLog
	blob := internetHandler()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		log.add(r)
		blob.ServeHTTP(&cutWriter{ResponseWriter: w, limit: cut}, r)
	}))
	defer srv.Close()
	url := fmt.Sprintf("%s/blob/%d", srv.URL, size)
	res, err := testDownload(t, url, fetchOptions{Resume: true, Stall: 5 * time.Second, Retries: 20})
	if err != nil {
		t.Fatalf("%v; requests %v", err, &log)
	}
	if res.Bytes != size || res.SHA256 != blobSHA256(size) {
		t.Fatalf("%d bytes, sha256 %s", res.Bytes, res.SHA256)
	}
	want := `["" "bytes=40000-" "bytes=80000-" "bytes=120000-" "bytes=160000-"]`
	if res.Resumes != 4 || log.String() != want {
		t.Fatalf("%d resumes, requests %v, want %s", res.Resumes, &log, want)
	}

	// Without --resume the first cut is the end, and an error.
	if _, err := testDownload(t, url, fetchOptions{Stall: 5 * time.Second}); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("a cut download without resume gave %v", err)
	}
}

// TestFetchResumesAfterStall: the first response never comes, the second
// sends part of the body and then nothing; each time the download gives
// up after the stall time and asks again, and it reports the gap.
func TestFetchResumesAfterStall(t *testing.T) {
	const size, part, stall = 150000, 50000, 300 * time.Millisecond
	var log rangeLog
	blob := internetHandler()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch log.add(r) {
		case 1:
		case 2:
			w.Header().Set("Content-Length", fmt.Sprint(size))
			io.Copy(w, io.LimitReader(blobReader(size), part))
			w.(http.Flusher).Flush()
		default:
			blob.ServeHTTP(w, r)
			return
		}
		select { // until the client gives up, or long past the test
		case <-r.Context().Done():
		case <-time.After(30 * time.Second):
		}
	}))
	defer srv.Close()
	res, err := testDownload(t, fmt.Sprintf("%s/blob/%d", srv.URL, size), fetchOptions{Resume: true, Stall: stall, Retries: 3})
	if err != nil {
		t.Fatalf("%v; requests %v", err, &log)
	}
	if res.Bytes != size || res.SHA256 != blobSHA256(size) || res.Resumes != 2 || log.String() != `["" "" "bytes=50000-"]` {
		t.Fatalf("%d bytes, sha256 %s, %d resumes, requests %v", res.Bytes, res.SHA256, res.Resumes, &log)
	}
	if res.MaxGap < stall || res.MaxGap > 10*time.Second {
		t.Fatalf("longest gap %v, the stall was %v", res.MaxGap, stall)
	}
}

// TestFetchServerIgnoresRanges: a server that sends everything again is
// read past what was hashed already; one that never gets further uses
// up the retries and the download fails.
func TestFetchServerIgnoresRanges(t *testing.T) {
	const size = 100000
	var log rangeLog
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := log.add(r)
		limit := 30000 * n // further each time
		if strings.HasPrefix(r.URL.Path, "/stuck/") {
			limit = 30000
		}
		w.Header().Set("Content-Length", fmt.Sprint(size))
		io.Copy(&cutWriter{ResponseWriter: w, limit: limit}, blobReader(size))
	}))
	defer srv.Close()
	res, err := testDownload(t, srv.URL+"/blob/100000", fetchOptions{Resume: true, Stall: 5 * time.Second, Retries: 5})
	if err != nil || res.Bytes != size || res.SHA256 != blobSHA256(size) || res.Resumes != 3 {
		t.Fatalf("%v: %d bytes, sha256 %s, %d resumes, requests %v", err, res.Bytes, res.SHA256, res.Resumes, &log)
	}
	res, err = testDownload(t, srv.URL+"/stuck/100000", fetchOptions{Resume: true, Stall: 5 * time.Second, Retries: 3})
	if err == nil || !strings.Contains(err.Error(), "gave up after 3 resumes") || res.Resumes != 3 {
		t.Fatalf("a download that never progresses: %v, %d resumes", err, res.Resumes)
	}
}

// TestFetchRefusalIsFinal: an error status is not retried.
func TestFetchRefusalIsFinal(t *testing.T) {
	var log rangeLog
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		log.add(r)
		http.NotFound(w, r)
	}))
	defer srv.Close()
	res, err := testDownload(t, srv.URL+"/blob/1", fetchOptions{Resume: true, Stall: 5 * time.Second, Retries: 5})
	if err == nil || !strings.Contains(err.Error(), "404") || res.Resumes != 0 || log.String() != `[""]` {
		t.Fatalf("%v, %d resumes, requests %v", err, res.Resumes, &log)
	}
}

// TestFetchRate: the rate limit makes the download last size/rate, and
// its pauses (50 ms) are not taken for stalls (40 ms): if they were, every
// read would end in a resume.
func TestFetchRate(t *testing.T) {
	srv := httptest.NewServer(internetHandler())
	defer srv.Close()
	const size, rate = 60000, 100000
	res, err := testDownload(t, fmt.Sprintf("%s/blob/%d", srv.URL, size), fetchOptions{Resume: true, Stall: 40 * time.Millisecond, Retries: 20, Rate: rate})
	if err != nil {
		t.Fatal(err)
	}
	// The last read's pause is not waited for: size/rate less one read.
	if min := time.Duration(size-rate/20) * time.Second / rate; res.Elapsed < min || res.Elapsed > 10*time.Second {
		t.Fatalf("%d bytes at %d/s took %v", size, rate, res.Elapsed)
	}
	// A loaded machine may really keep a request waiting 40 ms, once.
	if res.Resumes > 2 || res.SHA256 != blobSHA256(size) {
		t.Fatalf("%d resumes, sha256 %s", res.Resumes, res.SHA256)
	}
}

func TestParseContentRange(t *testing.T) {
	for _, c := range []struct {
		in          string
		first, size int64
		ok          bool
	}{
		{"bytes 100-199/1000", 100, 1000, true},
		{"bytes 0-0/*", 0, -1, true},
		{"bytes */1000", 0, 0, false},
		{"items 1-2/3", 0, 0, false},
		{"bytes 5-9", 0, 0, false},
	} {
		first, size, err := parseContentRange(c.in)
		if (err == nil) != c.ok || c.ok && (first != c.first || size != c.size) {
			t.Errorf("%q: %d %d %v", c.in, first, size, err)
		}
	}
}
