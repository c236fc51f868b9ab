package main

import (
	"bytes"
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"sync"
	"testing"
	"time"
)

func TestParseSize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
	}{
		{"65536", 65536}, {"64KiB", 64 << 10}, {"10MiB", 10 << 20}, {"1GiB", 1 << 30},
		{"3 MB", 3e6}, {"1GB", 1e9}, {"17B", 17},
	} {
		got, err := parseSize(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
		}
		if back, err := parseSize(formatSize(got)); err != nil || back != got {
			t.Errorf("parseSize(formatSize(%d)) = %d, %v", got, back, err)
		}
	}
	for _, bad := range []string{"", "0", "-1", "1TiB", "x", "1.5GiB", "99999999999GiB"} {
		if n, err := parseSize(bad); err == nil {
			t.Errorf("parseSize(%q) = %d, want an error", bad, n)
		}
	}
}

func TestHeader(t *testing.T) {
	for _, n := range []int64{0, 1, 1 << 30, 1<<56 - 1} {
		for _, m := range []byte{modeDown, modeUp, modeEcho} {
			gm, gn := parseHeader(header(m, n))
			if gm != m || gn != n {
				t.Errorf("parseHeader(header(%c, %d)) = %c, %d", m, n, gm, gn)
			}
		}
	}
}

func TestMedian(t *testing.T) {
	for _, tc := range []struct {
		in   []float64
		want float64
	}{{[]float64{3}, 3}, {[]float64{5, 1, 3}, 3}, {[]float64{4, 1, 3, 2}, 2.5}} {
		if got := median(tc.in); got != tc.want {
			t.Errorf("median(%v) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

// lineWriter collects a role's output so that the test can wait for its
// "listening ADDR" line.
type lineWriter struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.Write(p)
}

func (w *lineWriter) addr(t *testing.T) string {
	t.Helper()
	re := regexp.MustCompile(`(?m)^listening (\S+)$`)
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		w.mu.Lock()
		m := re.FindStringSubmatch(w.buf.String())
		w.mu.Unlock()
		if m != nil {
			return m[1]
		}
	}
	t.Fatal("role printed no listening line")
	return ""
}

// startRole runs a role in this process until the test ends and returns
// its address.
func startRole(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	w := &lineWriter{}
	done := make(chan error, 1)
	go func() { done <- run(ctx, args, w, io.Discard) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("%s: %v", args[0], err)
		}
	})
	return w.addr(t)
}

// TestTunnels carries downloads, uploads and echoes through the fake DC
// along the plain TLS and quic-go tunnels and the splice, as the
// benchmark does.
func TestTunnels(t *testing.T) {
	dir := t.TempDir()
	cert, key := filepath.Join(dir, "c.pem"), filepath.Join(dir, "k.pem")
	if err := writeCert(cert, key, tunnelName); err != nil {
		t.Fatal(err)
	}
	pin, err := spkiPin(cert)
	if err != nil {
		t.Fatal(err)
	}
	const buf = 16 << 10
	bufArg := "--buf=16KiB"
	dc := startRole(t, "dc", bufArg)
	tlsSrv := startRole(t, "tls-server", "--cert", cert, "--key", key, bufArg)
	tlsCli := startRole(t, "tls-client", "--server", tlsSrv, "--pin", pin, bufArg)
	quicSrv := startRole(t, "quic-server", "--cert", cert, "--key", key, bufArg)
	quicCli := startRole(t, "quic-client", "--server", quicSrv, "--pin", pin, bufArg)
	splice := startRole(t, "splice", "--to", dc, bufArg)

	paths := []*path{
		{name: "plain-tls", open: func() (stream, error) { return socksDial(tlsCli, dc) }},
		{name: "plain-quic", open: func() (stream, error) { return socksDial(quicCli, dc) }},
		{name: "splice", open: func() (stream, error) {
			c, err := net.Dial("tcp", splice)
			if err != nil {
				return nil, err
			}
			return c.(*net.TCPConn), nil
		}},
	}
	for _, p := range paths {
		t.Run(p.name, func(t *testing.T) {
			for _, mode := range []byte{modeDown, modeUp} {
				s, err := p.open()
				if err != nil {
					t.Fatal(err)
				}
				if err := transfer(s, mode, 40*buf+5, packet(buf)); err != nil {
					t.Errorf("mode %c: %v", mode, err)
				}
				s.Close()
			}
			if err := echoOnce(p); err != nil {
				t.Errorf("echo: %v", err)
			}
		})
	}
	// The tunnels refuse a target they cannot reach, as SOCKS5 says.
	if s, err := socksDial(tlsCli, "127.0.0.1:1"); err == nil {
		s.Close()
		t.Error("tls-client: CONNECT to a closed port succeeded")
	}
}

// TestSyscalls: the count from /proc/PID/io grows with this process's own
// system calls.
func TestSyscalls(t *testing.T) {
	n0, err := syscalls(os.Getpid())
	if err != nil {
		t.Skipf("no /proc/PID/io here: %v", err)
	}
	f, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 1)
	for range 10 {
		f.Read(buf)
	}
	n1, err := syscalls(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if n1-n0 < 10 {
		t.Errorf("10 reads counted as %v system calls", n1-n0)
	}
}
