//go:build unix

package quiccarrier

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"

	upquic "github.com/quic-go/quic-go"
	uphttp3 "github.com/quic-go/quic-go/http3"

	"github.com/merpati/merpati/transport/auth"
	"github.com/merpati/merpati/transport/hello"
	"github.com/merpati/merpati/transport/hello/ja4"
	"github.com/merpati/merpati/transport/tlscarrier"
)

// fpServerName is the name our hellos and Chromium's carry in SNI; it is
// mapped to 127.0.0.1 and never resolved.
const fpServerName = "merpati.test"

// TestChromiumQUICJA4 serves HTTP/3 on loopback, lets Debian's
// /usr/bin/chromium load a page from it over QUIC and then our Dialer
// connect, reassembles each ClientHello from the decrypted Initial
// packets, and requires the same JA4 (with "q") for ours as for
// Chromium's, with no exception. scripts/ja4-quic-capture.sh
// cross-checks the result with tshark's own QUIC decryption;
// TestChromiumQUICInitialLayout compares what follows the hello.
//
// Without /usr/bin/chromium the test is skipped, unless the environment
// variable CI is set, in which case it fails.
func TestChromiumQUICJA4(t *testing.T) {
	chromium, err := exec.LookPath("/usr/bin/chromium")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("chromium is required in CI: %v", err)
		}
		t.Skipf("chromium not installed: %v", err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()

	hellos := make(chan capturedHello, 64)
	pc, err := net.ListenPacket("udp", fpListenAddr(t))
	if err != nil {
		t.Fatal(err)
	}
	cert := testCertFor(t, fpServerName)
	pin, err := tlscarrier.Pin(cert)
	if err != nil {
		t.Fatal(err)
	}
	srv := &uphttp3.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, "<!doctype html><title>merpati</title><p>ok</p>")
		}),
		TLSConfig:  uphttp3.ConfigureTLSConfig(serverTLS(cert)),
		QUICConfig: &upquic.Config{},
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(&recordingPacketConn{PacketConn: pc, hellos: hellos})
	}()
	defer func() { srv.Close(); pc.Close(); <-done }()
	if out, err := exec.CommandContext(ctx, chromium, "--version").Output(); err == nil {
		t.Logf("browser: %s", bytes.TrimSpace(out))
	}
	loadWithChromium(ctx, t, chromium, pc.LocalAddr().(*net.UDPAddr), pin)
	var chrome []capturedHello
	for len(hellos) > 0 {
		chrome = append(chrome, <-hellos)
	}
	if len(chrome) == 0 {
		t.Fatal("chromium sent no QUIC ClientHello")
	}

	for i, ch := range chrome {
		t.Logf("chromium: %s (hello %d bytes, Initial datagrams %v)", ja4.Fingerprint(ch.hello, ja4.QUIC), len(ch.msg), ch.datagrams)
		if i == 0 {
			t.Logf("chromium JA4_r: %s", ja4.Raw(ch.hello, ja4.QUIC))
		}
	}

	// One connection of ours, last: scripts/ja4-quic-capture.sh counts
	// on it.
	d, err := NewDialer(ClientConfig{Addr: pc.LocalAddr().String(), ServerName: fpServerName, Pin: pin, Key: auth.NewKey()})
	if err != nil {
		t.Fatal(err)
	}
	s, err := d.Dial(ctx)
	if err != nil {
		t.Fatalf("our dial: %v", err)
	}
	s.Close()
	var ours capturedHello
	select {
	case ours = <-hellos:
	case <-ctx.Done():
		t.Fatal("server saw no hello from us")
	}
	got := ja4.Fingerprint(ours.hello, ja4.QUIC)
	t.Logf("ours:     %s (hello %d bytes, Initial datagrams %v)", got, len(ours.msg), ours.datagrams)
	t.Logf("ours     JA4_r: %s", ja4.Raw(ours.hello, ja4.QUIC))
	for i, ch := range chrome {
		if want := ja4.Fingerprint(ch.hello, ja4.QUIC); got != want {
			t.Errorf("JA4 %s, chromium's hello %d: %s", got, i, want)
		}
		// tlscarrier's copy of Chromium's trust anchor list, which changes
		// with Chromium's root store.
		if a, b := extensionBody(ours.hello, 0xca34), extensionBody(ch.hello, 0xca34); !bytes.Equal(a, b) {
			t.Errorf("0xca34 body %x, chromium's hello %d: %x", a, i, b)
		}
		for _, diff := range quicBeyondJA4(ours, ch) {
			t.Logf("beyond JA4, chromium's hello %d: %s", i, diff)
		}
	}
}

// loadWithChromium lets chromium load the page served over HTTP/3 at
// addr (a loopback address) under the name fpServerName, with QUIC forced
// on and the certificate accepted by its pin, and fails t unless the page
// arrived. Every other name resolves to nothing, so nothing leaves
// loopback even if a flag stops working.
func loadWithChromium(ctx context.Context, t *testing.T, chromium string, addr *net.UDPAddr, pin [32]byte) {
	t.Helper()
	origin := net.JoinHostPort(fpServerName, strconv.Itoa(addr.Port))
	host := addr.IP.String()
	if addr.IP.To4() == nil {
		host = "[" + host + "]"
	}
	cmd := exec.CommandContext(ctx, chromium,
		"--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--user-data-dir="+t.TempDir(), "--ignore-certificate-errors",
		// Chromium's QUIC stack ignores only errors for listed keys.
		"--ignore-certificate-errors-spki-list="+base64.StdEncoding.EncodeToString(pin[:]),
		"--enable-quic", "--origin-to-force-quic-on="+origin,
		fmt.Sprintf("--host-resolver-rules=MAP %s %s, MAP * ~NOTFOUND", fpServerName, host),
		"--dump-dom", "https://"+origin+"/")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if cmd.Process != nil {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	if err != nil {
		t.Fatalf("chromium: %v\n%s", err, stderr.Bytes())
	}
	if !bytes.Contains(out, []byte("<p>ok</p>")) {
		t.Fatalf("chromium did not load the page over QUIC; its DOM:\n%s\nstderr:\n%s", out, stderr.Bytes())
	}
}

// quicBeyondJA4 lists differences a DPI box could see apart from JA4.
func quicBeyondJA4(ours, ref capturedHello) []string {
	var diffs []string
	o, r := ours.hello, ref.hello
	lists := []struct {
		name     string
		our, ref []uint16
	}{
		{"cipher suites", o.CipherSuites, r.CipherSuites},
		{"supported groups", o.SupportedGroups, r.SupportedGroups},
		{"key share groups", o.KeyShareGroups, r.KeyShareGroups},
		{"supported versions", o.SupportedVersions, r.SupportedVersions},
		{"signature algorithms", o.SignatureAlgorithms, r.SignatureAlgorithms},
		{"extension set", sortedU16(o.Extensions), sortedU16(r.Extensions)},
		// Both shuffle the transport parameters per connection.
		{"transport parameter ids", sortedU16(transportParamIDs(o)), sortedU16(transportParamIDs(r))},
	}
	for _, l := range lists {
		if !slices.Equal(l.our, l.ref) {
			diffs = append(diffs, fmt.Sprintf("%s: ours %x, chromium %x", l.name, l.our, l.ref))
		}
	}
	if len(ours.msg) != len(ref.msg) {
		diffs = append(diffs, fmt.Sprintf("hello length: ours %d, chromium %d", len(ours.msg), len(ref.msg)))
	}
	if !slices.Equal(ours.datagrams, ref.datagrams) {
		diffs = append(diffs, fmt.Sprintf("Initial datagram sizes: ours %v, chromium %v", ours.datagrams, ref.datagrams))
	}
	for _, typ := range []uint16{0x0010, 0x001b, 0x002d, 0x44cd, 0xca34} {
		a, _ := o.ExtensionData(typ)
		b, _ := r.ExtensionData(typ)
		if !bytes.Equal(a, b) {
			diffs = append(diffs, fmt.Sprintf("extension %#04x body: ours %x, chromium %x", typ, a, b))
		}
	}
	return diffs
}

// extensionBody returns the body of h's extension typ, or nil.
func extensionBody(h *hello.ClientHello, typ uint16) []byte {
	b, _ := h.ExtensionData(typ)
	return b
}

func sortedU16(v []uint16) []uint16 {
	out := slices.Clone(v)
	for i, x := range out {
		if hello.IsGREASE(x) {
			out[i] = 0x0a0a
		}
	}
	slices.Sort(out)
	return out
}

// transportParamIDs lists the ids in the quic_transport_parameters
// extension (0x39), in wire order, with GREASE ids (31*N+27) as 0x1b.
func transportParamIDs(h *hello.ClientHello) []uint16 {
	b, ok := h.ExtensionData(0x39)
	if !ok {
		return nil
	}
	var ids []uint16
	for len(b) > 0 {
		id, n, err := readVarint(b)
		if err != nil {
			return ids
		}
		b = b[n:]
		l, n, err := readVarint(b)
		if err != nil || uint64(len(b)-n) < l {
			return ids
		}
		b = b[n+int(l):]
		if id >= 27 && (id-27)%31 == 0 {
			id = 0x1b // GREASE (RFC 9000 section 18.1)
		}
		ids = append(ids, uint16(id))
	}
	return ids
}

// fpListenAddr is 127.0.0.1:0, or the loopback address in
// MERPATI_JA4_ADDR, which scripts/ja4-quic-capture.sh sets so that tshark
// can filter on the port.
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
