//go:build unix

package tlscarrier

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	utls "github.com/refraction-networking/utls"

	"github.com/merpati/merpati/transport/hello"
	"github.com/merpati/merpati/transport/hello/ja4"
)

// chromium156JA4Raw is the raw JA4 of Debian's Chromium 156.0.8078.79,
// with %04x standing for its GREASE signature algorithm.
const chromium156JA4Raw = "t13d1517h2_002f,0035,009c,009d,1301,1302,1303,c013,c014,c02b,c02c,c02f,c030,cca8,cca9_" +
	"0005,000a,000b,000d,0012,0017,001b,0023,002b,002d,0033,44cd,ca34,fe0d,ff01_" +
	"%04x,0904,0905,0906,0403,0804,0401,0503,0805,0501,0806,0601"

// fpServerName is the name our hellos and Chromium's carry in SNI; it is
// mapped to 127.0.0.1 and never resolved.
const fpServerName = "merpati.test"

// TestChromeHelloSpec checks, without Chromium, that hellos built from
// chromeHelloSpec have Chromium 156's JA4 and vary the way Chromium's do.
func TestChromeHelloSpec(t *testing.T) {
	orders := map[string]bool{}
	sigGREASE := map[uint16]bool{}
	for range 40 {
		rec := fpClientHelloOverPipe(t)
		h, err := hello.Parse(rec)
		if err != nil {
			t.Fatal(err)
		}
		g := h.SignatureAlgorithms[0]
		if !hello.IsGREASE(g) {
			t.Fatalf("first signature algorithm %#04x is not GREASE", g)
		}
		if got, want := ja4.Raw(h, ja4.TCP), fmt.Sprintf(chromium156JA4Raw, g); got != want {
			t.Fatalf("JA4Raw = %s\nwant     %s", got, want)
		}
		n := len(h.Extensions)
		if !hello.IsGREASE(h.Extensions[0]) || !hello.IsGREASE(h.Extensions[n-1]) {
			t.Errorf("extensions %x do not start and end with GREASE", h.Extensions)
		}
		orders[fmt.Sprint(h.Extensions[1:n-1])] = true
		sigGREASE[g] = true
	}
	if len(orders) < 35 || len(sigGREASE) < 5 {
		t.Errorf("40 hellos had %d extension orders and %d GREASE signature algorithms", len(orders), len(sigGREASE))
	}
}

// fpClientHelloOverPipe returns the first record a uTLS client with
// chromeHelloSpec writes.
func fpClientHelloOverPipe(t *testing.T) []byte {
	t.Helper()
	c, s := net.Pipe()
	defer s.Close()
	spec, err := chromeHelloSpec()
	if err != nil {
		t.Fatal(err)
	}
	uc := utls.UClient(c, &utls.Config{ServerName: fpServerName}, utls.HelloCustom)
	if err := uc.ApplyPreset(spec); err != nil {
		t.Fatal(err)
	}
	go func() {
		_ = uc.Handshake() // fails when s closes
		c.Close()
	}()
	rec, err := hello.ReadRecord(s)
	if err != nil {
		t.Fatal(err)
	}
	return rec
}

// TestChromiumJA4 captures the TLS hello of the Chromium on this machine
// and of a uTLS client using chromeHelloSpec, both against the same local
// HTTPS server, and requires equal JA4 fingerprints and equal values for
// what JA4 leaves out. Chromium only ever talks to 127.0.0.1.
//
// scripts/ja4-capture.sh runs it under tshark as an independent check of
// the JA4 computed here.
//
// Without /usr/bin/chromium the test is skipped, unless the environment
// variable CI is set, in which case it fails.
func TestChromiumJA4(t *testing.T) {
	chromium, err := exec.LookPath("/usr/bin/chromium")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("chromium is required in CI: %v", err)
		}
		t.Skipf("chromium not installed: %v", err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()

	hellos := make(chan []byte, 64)
	ln, err := net.Listen("tcp", fpListenAddr(t))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "<!doctype html><title>merpati</title><p>ok</p>")
	}))
	srv.Listener.Close()
	srv.Listener = &fpRecordingListener{Listener: ln, hellos: hellos}
	srv.EnableHTTP2 = true
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // Chromium's spare connections are cut at Close
	srv.StartTLS()
	defer srv.Close()
	port := ln.Addr().(*net.TCPAddr).Port

	if out, err := exec.CommandContext(ctx, chromium, "--version").Output(); err == nil {
		t.Logf("browser: %s", bytes.TrimSpace(out))
	}
	url := fmt.Sprintf("https://%s:%d/", fpServerName, port)
	cmd := exec.CommandContext(ctx, chromium,
		"--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--user-data-dir="+t.TempDir(), "--ignore-certificate-errors", "--disable-quic",
		// Every name resolves to nothing except ours, so nothing leaves
		// loopback even if a flag above stops working.
		fmt.Sprintf("--host-resolver-rules=MAP %s 127.0.0.1, MAP * ~NOTFOUND", fpServerName),
		"--dump-dom", url)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if cmd.Process != nil {
		// Kill whatever Chromium left behind in its process group.
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	if err != nil {
		t.Fatalf("chromium: %v\n%s", err, stderr.Bytes())
	}
	if !bytes.Contains(out, []byte("<p>ok</p>")) {
		t.Fatalf("chromium did not load the page; its DOM:\n%s\nstderr:\n%s", out, stderr.Bytes())
	}
	chromeRecs := fpDrain(hellos)
	if len(chromeRecs) == 0 {
		t.Fatal("chromium sent no ClientHello")
	}

	ourRec, ourHello := fpDialOurs(ctx, t, ln.Addr().String(), hellos)
	t.Logf("ours:     %s (record of %d bytes)", ja4.Fingerprint(ourHello, ja4.TCP), len(ourRec))
	for i, rec := range chromeRecs {
		ch, err := hello.Parse(rec)
		if err != nil {
			t.Fatalf("chromium hello %d: %v", i, err)
		}
		t.Logf("chromium: %s (record of %d bytes)", ja4.Fingerprint(ch, ja4.TCP), len(rec))
		if i == 0 {
			t.Logf("chromium JA4_r: %s", ja4.Raw(ch, ja4.TCP))
			t.Logf("ours     JA4_r: %s", ja4.Raw(ourHello, ja4.TCP))
		}
		// Chromium and we each pick a random GREASE signature algorithm,
		// so compare ours as it would be had we picked Chromium's.
		aligned := fpAlignSigGREASE(ourHello, ch)
		if got, want := ja4.Fingerprint(aligned, ja4.TCP), ja4.Fingerprint(ch, ja4.TCP); got != want {
			t.Errorf("hello %d: JA4 %s (as sent: %s), chromium %s", i, got, ja4.Fingerprint(ourHello, ja4.TCP), want)
		}
		for _, d := range fpBeyondJA4(ourRec, ourHello, rec, ch) {
			t.Errorf("hello %d: %s", i, d)
		}
	}
}

// fpListenAddr is 127.0.0.1:0, or the loopback address in
// MERPATI_JA4_ADDR, which scripts/ja4-capture.sh sets so that tshark can
// filter on the port.
func fpListenAddr(t *testing.T) string {
	addr := os.Getenv("MERPATI_JA4_ADDR")
	if addr == "" {
		return "127.0.0.1:0"
	}
	host, _, err := net.SplitHostPort(addr)
	if ip := net.ParseIP(host); err != nil || ip == nil || !ip.IsLoopback() {
		t.Fatalf("MERPATI_JA4_ADDR=%q is not a loopback address and port", addr)
	}
	return addr
}

// fpDialOurs connects a uTLS client with chromeHelloSpec to addr,
// completes the handshake and returns the hello the server recorded.
func fpDialOurs(ctx context.Context, t *testing.T, addr string, hellos <-chan []byte) ([]byte, *hello.ClientHello) {
	t.Helper()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	spec, err := chromeHelloSpec()
	if err != nil {
		t.Fatal(err)
	}
	// The test server's certificate is throwaway and names example.com.
	uc := utls.UClient(conn, &utls.Config{ServerName: fpServerName, InsecureSkipVerify: true}, utls.HelloCustom)
	if err := uc.ApplyPreset(spec); err != nil {
		t.Fatal(err)
	}
	if err := uc.HandshakeContext(ctx); err != nil {
		t.Fatalf("our handshake: %v", err)
	}
	if p := uc.ConnectionState().NegotiatedProtocol; p != "h2" {
		t.Errorf("negotiated %q, want h2", p)
	}
	select {
	case rec := <-hellos:
		h, err := hello.Parse(rec)
		if err != nil {
			t.Fatalf("our hello: %v", err)
		}
		return rec, h
	case <-ctx.Done():
		t.Fatal("server saw no hello from us")
	}
	return nil, nil
}

// fpAlignSigGREASE returns a copy of ours whose GREASE signature
// algorithms are replaced by ref's at the same positions.
func fpAlignSigGREASE(ours, ref *hello.ClientHello) *hello.ClientHello {
	c := *ours
	c.SignatureAlgorithms = slices.Clone(ours.SignatureAlgorithms)
	for i, v := range c.SignatureAlgorithms {
		if hello.IsGREASE(v) && i < len(ref.SignatureAlgorithms) && hello.IsGREASE(ref.SignatureAlgorithms[i]) {
			c.SignatureAlgorithms[i] = ref.SignatureAlgorithms[i]
		}
	}
	return &c
}

// fpBeyondJA4 lists the differences between our hello and Chromium's in
// what JA4 does not see but a DPI box could.
func fpBeyondJA4(ourRec []byte, ours *hello.ClientHello, refRec []byte, ref *hello.ClientHello) []string {
	var diffs []string
	differ := func(format string, args ...any) { diffs = append(diffs, fmt.Sprintf(format, args...)) }
	lists := []struct {
		name     string
		our, ref []uint16
	}{
		{"cipher suites", ours.CipherSuites, ref.CipherSuites},
		{"supported groups", ours.SupportedGroups, ref.SupportedGroups},
		{"key share groups", ours.KeyShareGroups, ref.KeyShareGroups},
		{"supported versions", ours.SupportedVersions, ref.SupportedVersions},
		{"signature algorithms", ours.SignatureAlgorithms, ref.SignatureAlgorithms},
		{"extension set", fpSorted(ours.Extensions), fpSorted(ref.Extensions)},
	}
	for _, l := range lists {
		if a, b := fpUnGREASE(l.our), fpUnGREASE(l.ref); !slices.Equal(a, b) {
			differ("%s: ours %x, chromium %x", l.name, a, b)
		}
	}
	for _, h := range []*hello.ClientHello{ours, ref} {
		if n := len(h.Extensions); n < 2 || !hello.IsGREASE(h.Extensions[0]) || !hello.IsGREASE(h.Extensions[n-1]) {
			differ("extensions %x do not start and end with GREASE", h.Extensions)
		}
	}
	if !bytes.Equal(ourRec[:3], refRec[:3]) {
		differ("record header: ours %x, chromium %x", ourRec[:3], refRec[:3])
	}
	if ours.Version != ref.Version || len(ours.SessionID) != len(ref.SessionID) ||
		!bytes.Equal(ours.CompressionMethods, ref.CompressionMethods) {
		differ("version/session id length/compression: ours %#x/%d/%x, chromium %#x/%d/%x",
			ours.Version, len(ours.SessionID), ours.CompressionMethods,
			ref.Version, len(ref.SessionID), ref.CompressionMethods)
	}
	if ours.ServerName != ref.ServerName || !slices.Equal(ours.ALPN, ref.ALPN) {
		differ("SNI/ALPN: ours %q %q, chromium %q %q", ours.ServerName, ours.ALPN, ref.ServerName, ref.ALPN)
	}
	// Extensions whose bodies are the same on every connection.
	for _, typ := range []uint16{0x0005, 0x000b, 0x0012, 0x0017, 0x001b, 0x0023, 0x002d, 0x44cd, 0xca34, 0xff01} {
		a, _ := ours.ExtensionData(typ)
		b, _ := ref.ExtensionData(typ)
		if !bytes.Equal(a, b) {
			differ("extension %#04x body: ours %x, chromium %x", typ, a, b)
		}
	}
	// The key shares differ in value only.
	if a, b := fpKeyShareLens(ours), fpKeyShareLens(ref); !slices.Equal(a, b) {
		differ("key share lengths: ours %v, chromium %v", a, b)
	}
	// The second GREASE extension carries one zero byte.
	if a, b := fpLastExtBody(ours), fpLastExtBody(ref); !bytes.Equal(a, b) {
		differ("last GREASE extension body: ours %x, chromium %x", a, b)
	}
	// ECH GREASE: same HPKE suite and enc length; the payload length is
	// one of four, picked per connection by both.
	ourECH, _ := ours.ExtensionData(0xfe0d)
	refECH, _ := ref.ExtensionData(0xfe0d)
	ourPayload, okA := fpECHPayloadLen(ourECH)
	refPayload, okB := fpECHPayloadLen(refECH)
	if !okA || !okB || !bytes.Equal(ourECH[:5], refECH[:5]) || !slices.Contains([]int{144, 176, 208, 240}, ourPayload) ||
		!slices.Contains([]int{144, 176, 208, 240}, refPayload) {
		differ("ECH GREASE: ours %x…(%d), chromium %x…(%d)", ourECH[:min(8, len(ourECH))], ourPayload, refECH[:min(8, len(refECH))], refPayload)
	} else if len(ourRec)-ourPayload != len(refRec)-refPayload {
		differ("record length apart from the ECH payload: ours %d, chromium %d", len(ourRec)-ourPayload, len(refRec)-refPayload)
	}
	if ours.HasExtension(0x0015) != ref.HasExtension(0x0015) {
		differ("padding extension: ours %v, chromium %v", ours.HasExtension(0x0015), ref.HasExtension(0x0015))
	}
	return diffs
}

func fpUnGREASE(v []uint16) []uint16 {
	out := slices.Clone(v)
	for i, x := range out {
		if hello.IsGREASE(x) {
			out[i] = 0x0a0a
		}
	}
	return out
}

func fpSorted(v []uint16) []uint16 {
	out := fpUnGREASE(v)
	slices.Sort(out)
	return out
}

func fpKeyShareLens(h *hello.ClientHello) []int {
	b, _ := h.ExtensionData(0x0033)
	if len(b) < 2 {
		return nil
	}
	b = b[2:] // client_shares length
	var lens []int
	for len(b) >= 4 {
		n := int(binary.BigEndian.Uint16(b[2:4]))
		lens = append(lens, n)
		b = b[min(len(b), 4+n):]
	}
	return lens
}

func fpLastExtBody(h *hello.ClientHello) []byte {
	b, _ := h.ExtensionData(h.Extensions[len(h.Extensions)-1])
	return b
}

// fpECHPayloadLen returns the payload length of an outer ECH extension
// (draft-ietf-tls-esni-22, Section 5): type, HPKE suite, config id, enc,
// payload.
func fpECHPayloadLen(b []byte) (int, bool) {
	if len(b) < 8 || b[0] != 0 {
		return 0, false
	}
	enc := int(binary.BigEndian.Uint16(b[6:8]))
	if len(b) < 10+enc {
		return 0, false
	}
	n := int(binary.BigEndian.Uint16(b[8+enc:]))
	return n, len(b) == 10+enc+n
}

func fpDrain(c <-chan []byte) [][]byte {
	var recs [][]byte
	for {
		select {
		case r := <-c:
			recs = append(recs, r)
		default:
			return recs
		}
	}
}

// fpRecordingListener hands out connections that report the first TLS
// record they read, the client's hello, on hellos.
type fpRecordingListener struct {
	net.Listener
	hellos chan<- []byte
}

func (l *fpRecordingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &fpRecordingConn{Conn: c, hellos: l.hellos}, nil
}

// fpRecordingConn copies what it reads until it has one whole record.
type fpRecordingConn struct {
	net.Conn
	hellos chan<- []byte
	mu     sync.Mutex
	buf    []byte
	done   bool
}

func (c *fpRecordingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done {
		return n, err
	}
	c.buf = append(c.buf, p[:n]...)
	if len(c.buf) >= hello.RecordHeaderLen {
		if size := hello.RecordHeaderLen + int(binary.BigEndian.Uint16(c.buf[3:5])); len(c.buf) >= size {
			c.done = true
			select {
			case c.hellos <- c.buf[:size:size]:
			default:
			}
		}
	}
	if err != nil && !errors.Is(err, io.EOF) {
		c.done = true
	}
	return n, err
}
