package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/merpati/merpati/transport/link"
)

func testLink() *link.Link {
	l := &link.Link{Relays: []string{"127.0.0.1:9"}, SNI: "www.example.org", Carriers: []string{"tls"}, Name: "test"}
	l.Pin[0], l.Key[0] = 1, 2
	return l
}

// syncBuffer is a bytes.Buffer safe for the concurrent writes of a running
// command and the test's reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestImportAndRun(t *testing.T) {
	dir := t.TempDir()
	var out, errOut syncBuffer
	if err := run(context.Background(), []string{"import", "--config-dir", dir, testLink().String()}, &out, &errOut); err != nil {
		t.Fatalf("import: %v %s", err, errOut.String())
	}
	fi, err := os.Stat(filepath.Join(dir, "link"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("saved link: %v, mode %v", err, fi.Mode().Perm())
	}

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"run", "--config-dir", dir, "--listen", "127.0.0.1:0"}, &out, &errOut)
	}()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(out.String(), "tg://socks?server=127.0.0.1&port=") {
		if time.Now().After(deadline) {
			t.Fatalf("no tg://socks link printed:\n%s\n%s", out.String(), errOut.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("run: %v", err)
	}
}

func TestBadInvocations(t *testing.T) {
	dir := t.TempDir()
	for _, args := range [][]string{
		{},
		{"fly"},
		{"import"},
		{"import", "--config-dir", dir, "merpati://nonsense"},
		{"run", "--config-dir", dir},             // nothing imported
		{"run", "--link", "https://example.org"}, // not a merpati link
		{"run", "--link", testLink().String(), "--socks-user", "nopass"},
	} {
		var out bytes.Buffer
		if err := run(context.Background(), args, &out, &out); err == nil {
			t.Errorf("%q succeeded:\n%s", args, out.String())
		}
	}
}
