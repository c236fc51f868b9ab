package bootstrap_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"go.uber.org/goleak"

	"github.com/merpati/merpati/client/bootstrap"
	"github.com/merpati/merpati/relay/dnsserver"
	"github.com/merpati/merpati/relay/relaytest"
	"github.com/merpati/merpati/transport/relaylist"
)

const zone = "boot.merpati.test"

var listKey = ed25519.NewKeyFromSeed(bytes.Repeat([]byte{5}, 32))

// bootKey is the audience's bootstrap key of the tests' links.
var bootKey = [32]byte(bytes.Repeat([]byte{0x42}, 32))

func checkLeaks(t *testing.T) {
	t.Helper()
	opts := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, opts) })
}

// chunks returns how many chunks data is sealed to today.
func chunks(data []byte) int {
	n, _ := relaylist.NewAudience(bootKey).Chunks(relaylist.PeriodOf(time.Now()), len(data))
	return n
}

// makeList signs a list of n relays with key.
func makeList(t testing.TB, key ed25519.PrivateKey, n int, seq uint64, expires time.Time) []byte {
	t.Helper()
	l := &relaylist.List{Seq: seq, Expires: expires}
	for i := range n {
		e := relaylist.Entry{
			Relays:   []string{fmt.Sprintf("relay-%03d.merpati.test:443", i), fmt.Sprintf("[2001:db8::%x]:443", i+1)},
			Carriers: []string{"tls", "quic"},
			SNI:      "www.cover.test",
			Name:     fmt.Sprintf("relay %d", i),
		}
		e.Pin[0], e.Pin[1] = 1, byte(i)
		e.Key[0], e.Key[1] = 2, byte(i)
		l.Entries = append(l.Entries, e)
	}
	data, err := relaylist.Sign(l, key)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// startDNS runs `merpati-relay dns`'s server in-process on a loopback
// port (UDP and TCP) and returns its address. wrap, if not nil, may alter
// answers.
func startDNS(t testing.TB, list []byte, wrap func(*dns.Msg)) string {
	t.Helper()
	return startDNSConfig(t, dnsserver.Config{Zone: zone, Audiences: []dnsserver.Audience{{Key: bootKey, Lists: [][]byte{list}}},
		NS: []string{"ns1." + zone}, NSAddrs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}}, wrap)
}

// startDNSConfig is startDNS with the server's whole Config.
func startDNSConfig(t testing.TB, cfg dnsserver.Config, wrap func(*dns.Msg)) string {
	t.Helper()
	if wrap == nil {
		return relaytest.StartDNS(t, cfg)
	}
	s, err := dnsserver.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	pc, ln, err := dnsserver.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	h := dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		_, udp := w.RemoteAddr().(*net.UDPAddr)
		m := s.Answer(r, w.RemoteAddr(), udp)
		wrap(m)
		w.WriteMsg(m)
	})
	for _, srv := range []*dns.Server{{PacketConn: pc, Handler: h}, {Listener: ln, Handler: h}} {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		wg.Go(func() { srv.ActivateAndServe() })
		<-started
		wg.Go(func() { <-ctx.Done(); srv.Shutdown() })
	}
	t.Cleanup(func() { cancel(); wg.Wait() })
	return pc.LocalAddr().String()
}

func fetcher(t *testing.T, resolvers []string, mod func(*bootstrap.Config)) *bootstrap.Fetcher {
	t.Helper()
	cfg := bootstrap.Config{
		Domains:   []string{zone},
		ListKey:   listKey.Public().(ed25519.PublicKey),
		Keys:      [][32]byte{bootKey},
		Resolvers: resolvers,
		CachePath: filepath.Join(t.TempDir(), "relays.bin"),
		Timeout:   5 * time.Second,
	}
	if mod != nil {
		mod(&cfg)
	}
	f, err := bootstrap.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.Close)
	return f
}

func fetch(t *testing.T, f *bootstrap.Fetcher) (*relaylist.List, time.Duration, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	start := time.Now()
	l, err := f.Fetch(ctx)
	return l, time.Since(start), err
}

// TestFetchDirect fetches straight from the authoritative server, over
// UDP, TCP, and UDP without EDNS0 (every chunk truncated, retried over
// TCP).
func TestFetchDirect(t *testing.T) {
	checkLeaks(t)
	data := makeList(t, listKey, 40, 3, time.Now().Add(time.Hour))
	addr := startDNS(t, data, nil)
	for _, tt := range []struct {
		name     string
		resolver string
		udpSize  uint16
	}{
		{"udp", addr, 0},
		{"tcp", "tcp://" + addr, 0},
		{"udp-truncated", "udp://" + addr, 512},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := fetcher(t, []string{tt.resolver}, func(c *bootstrap.Config) { c.UDPSize = tt.udpSize })
			l, took, err := fetch(t, f)
			if err != nil {
				t.Fatal(err)
			}
			if l.Seq != 3 || len(l.Entries) != 40 {
				t.Fatalf("got seq %d with %d entries", l.Seq, len(l.Entries))
			}
			t.Logf("%d-byte list (%d chunks) in %v", len(data), chunks(data), took)
		})
	}
}

// TestRejects serves bad lists and checks each fails with its error.
func TestRejects(t *testing.T) {
	checkLeaks(t)
	pub := listKey.Public().(ed25519.PublicKey)
	other := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{6}, 32))
	hour := time.Now().Add(time.Hour)
	cut := func(m *dns.Msg) { // shorten every chunk by 4 base64 characters
		for _, rr := range m.Answer {
			if t, ok := rr.(*dns.TXT); ok {
				last := len(t.Txt) - 1
				t.Txt[last] = t.Txt[last][:len(t.Txt[last])-4]
			}
		}
	}
	flip := func(m *dns.Msg) { // change one base64 character of every chunk
		for _, rr := range m.Answer {
			if t, ok := rr.(*dns.TXT); ok {
				b := []byte(t.Txt[0])
				if b[100] == 'A' {
					b[100] = 'B'
				} else {
					b[100] = 'A'
				}
				t.Txt[0] = string(b)
			}
		}
	}
	for _, tt := range []struct {
		name   string
		list   []byte
		wrap   func(*dns.Msg)
		cached []byte
		want   error
	}{
		{"forged", makeList(t, other, 3, 5, hour), nil, nil, relaylist.ErrSignature},
		{"expired", makeList(t, listKey, 3, 5, time.Now().Add(-time.Minute)), nil, nil, relaylist.ErrExpired},
		{"rolled back", makeList(t, listKey, 3, 5, hour), nil, makeList(t, listKey, 3, 6, hour), relaylist.ErrRollback},
		{"truncated", makeList(t, listKey, 3, 5, hour), cut, nil, relaylist.ErrMalformed},
		{"altered", makeList(t, listKey, 3, 5, hour), flip, nil, relaylist.ErrSealed},
	} {
		t.Run(tt.name, func(t *testing.T) {
			addr := startDNS(t, tt.list, tt.wrap)
			cache := filepath.Join(t.TempDir(), "relays.bin")
			if tt.cached != nil {
				if err := os.WriteFile(cache, tt.cached, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			f := fetcher(t, []string{addr}, func(c *bootstrap.Config) { c.CachePath = cache; c.ListKey = pub })
			_, _, err := fetch(t, f)
			if !errors.Is(err, tt.want) || !errors.Is(err, bootstrap.ErrNoList) {
				t.Fatalf("Fetch: %v, want %v", err, tt.want)
			}
			t.Logf("rejected: %v", err)
		})
	}
}

// TestCache checks that an accepted list is cached and sets the floor.
func TestCache(t *testing.T) {
	checkLeaks(t)
	hour := time.Now().Add(time.Hour)
	newer := startDNS(t, makeList(t, listKey, 2, 9, hour), nil)
	older := startDNS(t, makeList(t, listKey, 2, 8, hour), nil)
	cache := filepath.Join(t.TempDir(), "sub", "relays.bin")
	f := fetcher(t, []string{newer}, func(c *bootstrap.Config) { c.CachePath = cache })
	if _, _, err := fetch(t, f); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(cache); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("cache file: %v %v", fi, err)
	}
	f2 := fetcher(t, []string{older}, func(c *bootstrap.Config) { c.CachePath = cache })
	if l := f2.Cached(); l == nil || l.Seq != 9 {
		t.Fatalf("Cached() = %+v", l)
	}
	if _, _, err := fetch(t, f2); !errors.Is(err, relaylist.ErrRollback) {
		t.Fatalf("older list: %v, want rollback", err)
	}
}

// TestStagger checks that a dead resolver first in the list only delays
// the fetch, and that the next one starts as soon as it fails.
func TestStagger(t *testing.T) {
	checkLeaks(t)
	addr := startDNS(t, makeList(t, listKey, 2, 1, time.Now().Add(time.Hour)), nil)
	dead := closedPort(t)
	f := fetcher(t, []string{"tcp://" + dead, "tls://" + dead, addr}, func(c *bootstrap.Config) { c.Stagger = 5 * time.Second })
	_, took, err := fetch(t, f)
	if err != nil {
		t.Fatal(err)
	}
	if took > 2*time.Second {
		t.Errorf("took %v: failures did not start the next attempt early", took)
	}
}

// closedPort returns a loopback address nothing listens on.
func closedPort(t testing.TB) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func need(t testing.TB, tool string) string {
	t.Helper()
	p, err := exec.LookPath(tool)
	if err == nil {
		return p
	}
	for _, dir := range []string{"/usr/sbin", "/sbin"} {
		if p := filepath.Join(dir, tool); fileExists(p) {
			return p
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("%s is not installed; .ci/run installs it", tool)
	}
	t.Skipf("%s is not installed", tool)
	return ""
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// testCert writes a throwaway certificate for 127.0.0.1 and returns the
// file names and a pool that trusts it.
func testCert(t testing.TB, dir string) (certFile, keyFile string, roots *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "resolver.merpati.test"},
		DNSNames:              []string{"resolver.merpati.test"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600)
	cert, _ := x509.ParseCertificate(der)
	roots = x509.NewCertPool()
	roots.AddCert(cert)
	return certFile, keyFile, roots
}

// freePort returns a loopback port free for both TCP and UDP (for
// unbound, which must be given fixed ports).
func freePort(t testing.TB) int {
	t.Helper()
	pc, ln, err := dnsserver.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	pc.Close()
	ln.Close()
	return port
}

// unbound is a real recursive resolver on loopback, with our zone as a
// stub zone and no way out: everything else goes to a closed loopback
// port.
type unbound struct {
	udp, dot, doh string // "127.0.0.1:port", "127.0.0.1:port", "https://127.0.0.1:port/dns-query"
	roots         *x509.CertPool
}

func startUnbound(t testing.TB, stub string, tcpUpstream bool) *unbound {
	return startUnboundZone(t, zone, stub, tcpUpstream)
}

// startUnboundZone is startUnbound with zone as the stub zone.
func startUnboundZone(t testing.TB, zone, stub string, tcpUpstream bool) *unbound {
	t.Helper()
	bin := need(t, "unbound")
	dir := t.TempDir()
	certFile, keyFile, roots := testCert(t, dir)
	port, dotPort, dohPort := freePort(t), freePort(t), freePort(t)
	yesNo := map[bool]string{true: "yes", false: "no"}
	conf := fmt.Sprintf(`server:
	username: ""
	chroot: ""
	directory: %[1]q
	pidfile: %[11]q
	use-syslog: no
	logfile: ""
	verbosity: 2
	num-threads: 1
	so-reuseport: no
	do-daemonize: no
	interface: 127.0.0.1@%[2]d
	interface: 127.0.0.1@%[3]d
	interface: 127.0.0.1@%[4]d
	port: %[2]d
	tls-port: %[3]d
	https-port: %[4]d
	tls-service-key: %[5]q
	tls-service-pem: %[6]q
	http-endpoint: "/dns-query"
	outgoing-interface: 127.0.0.1
	do-ip6: no
	do-not-query-localhost: no
	access-control: 0.0.0.0/0 refuse
	access-control: 127.0.0.0/8 allow
	module-config: "iterator"
	edns-buffer-size: 1232
	tcp-upstream: %[7]s
	qname-minimisation: yes
	prefetch: no
	harden-referral-path: no
	# .test is special-use (RFC 6761); unbound answers it locally unless
	# told not to.
	local-zone: "test." nodefault
remote-control:
	control-enable: no
stub-zone:
	name: %[8]q
	stub-addr: %[9]s
	stub-prime: no
stub-zone:
	name: "."
	stub-addr: %[10]s
`, dir, port, dotPort, dohPort, keyFile, certFile, yesNo[tcpUpstream], zone, atPort(stub), atPort(closedPort(t)), filepath.Join(dir, "unbound.pid"))
	confFile := filepath.Join(dir, "unbound.conf")
	if err := os.WriteFile(confFile, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(need(t, "unbound-checkconf"), confFile).CombinedOutput(); err != nil {
		t.Fatalf("unbound-checkconf: %v\n%s", err, out)
	}
	logs := new(syncBuffer)
	cmd := exec.Command(bin, "-d", "-c", confFile)
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-done
		if t.Failed() {
			t.Logf("unbound log:\n%s", logs.String())
		}
	})
	u := &unbound{
		udp:   fmt.Sprintf("127.0.0.1:%d", port),
		dot:   fmt.Sprintf("127.0.0.1:%d", dotPort),
		doh:   fmt.Sprintf("https://127.0.0.1:%d/dns-query", dohPort),
		roots: roots,
	}
	// Wait until it answers.
	deadline := time.Now().Add(10 * time.Second)
	for {
		q := new(dns.Msg)
		q.SetQuestion(zone+".", dns.TypeSOA)
		c := &dns.Client{Timeout: 200 * time.Millisecond}
		r, _, err := c.Exchange(q, u.udp)
		if err == nil && r.Rcode == dns.RcodeSuccess {
			break
		}
		if err == nil {
			logs.WriteString(fmt.Sprintf("readiness probe: %s\n", dns.RcodeToString[r.Rcode]))
		}
		select {
		case <-done:
			t.Fatalf("unbound exited:\n%s", logs.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("unbound does not answer:\n%s", logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	return u
}

// syncBuffer is a bytes.Buffer safe for concurrent use.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) WriteString(s string) {
	b.Write([]byte(s))
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// atPort turns "host:port" into unbound's "host@port".
func atPort(addr string) string {
	h, p, _ := net.SplitHostPort(addr)
	return h + "@" + p
}

// TestUnbound fetches a list that needs many chunks through unbound over
// UDP, TCP, DoT and DoH, with unbound talking to our server over UDP and
// over TCP. Under the short zone every answer fits 512 bytes, with EDNS0
// or without; under a long one, answers to a client without EDNS0 come
// back truncated and are asked again over TCP.
func TestUnbound(t *testing.T) {
	checkLeaks(t)
	long := strings.Repeat("long-zone.", 9) + "merpati.test"
	data := makeList(t, listKey, 60, 42, time.Now().Add(time.Hour))
	for _, z := range []string{zone, long} {
		addr := startDNSConfig(t, dnsserver.Config{Zone: z, Audiences: []dnsserver.Audience{{Key: bootKey, Lists: [][]byte{data}}},
			NS: []string{"ns1." + z}, NSAddrs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}}, nil)
		for _, tcpUp := range []bool{false, true} {
			u := startUnboundZone(t, z, addr, tcpUp)
			for _, tt := range []struct {
				name     string
				resolver string
				udpSize  uint16
			}{
				{"udp", "udp://" + u.udp, 0},
				{"udp-no-edns", "udp://" + u.udp, 512},
				{"tcp", "tcp://" + u.udp, 0},
				{"dot", "tls://" + u.dot, 0},
				{"doh", u.doh, 0},
			} {
				t.Run(fmt.Sprintf("%s/upstream-tcp=%v/zone=%d", tt.name, tcpUp, len(z)), func(t *testing.T) {
					logs := new(syncBuffer)
					f := fetcher(t, []string{tt.resolver}, func(c *bootstrap.Config) {
						c.Domains = []string{z}
						c.UDPSize = tt.udpSize
						c.Spread = 10 * time.Millisecond // 20 fetches of dozens of chunks
						c.TLSConfig = &tls.Config{RootCAs: u.roots}
						c.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
					})
					l, took, err := fetch(t, f)
					if err != nil {
						t.Fatal(err)
					}
					if l.Seq != 42 || len(l.Entries) != 60 {
						t.Fatalf("got seq %d with %d entries", l.Seq, len(l.Entries))
					}
					t.Logf("%d-byte list in %d chunks via %s: %v", len(data), chunks(data), tt.resolver, took)
					// Without EDNS0, unbound's chunk answers under the long
					// zone exceed 512 bytes: they must have come back
					// truncated and been retried over TCP.
					wantTrunc := tt.udpSize == 512 && z == long
					if truncated := strings.Count(logs.String(), "retrying over TCP"); wantTrunc != (truncated > 0) {
						t.Errorf("%d answers truncated", truncated)
					}
				})
			}
		}
	}
}

// TestUnboundRejects checks a forged list is still rejected after a real
// resolver has cached it.
func TestUnboundRejects(t *testing.T) {
	checkLeaks(t)
	other := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{6}, 32))
	addr := startDNS(t, makeList(t, other, 5, 1, time.Now().Add(time.Hour)), nil)
	u := startUnbound(t, addr, false)
	f := fetcher(t, []string{u.udp}, nil)
	if _, _, err := fetch(t, f); !errors.Is(err, relaylist.ErrSignature) {
		t.Fatalf("Fetch: %v, want ErrSignature", err)
	}
}

// TestKdig queries the server with Knot's kdig over UDP and TCP.
func TestKdig(t *testing.T) {
	checkLeaks(t)
	kdig := need(t, "kdig")
	data := makeList(t, listKey, 10, 1, time.Now().Add(time.Hour))
	chunk := relaylist.NewAudience(bootKey).Name(relaylist.PeriodOf(time.Now()), 0, zone)
	addr := startDNS(t, data, nil)
	host, port, _ := net.SplitHostPort(addr)
	run := func(args ...string) string {
		t.Helper()
		args = append([]string{"@" + host, "-p", port, "+retry=0", "+timeout=2"}, args...)
		out, err := exec.Command(kdig, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("kdig %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	if out := run("TXT", chunk); !strings.Contains(out, "ANSWER: 1") || !strings.Contains(out, " aa") {
		t.Errorf("chunk 0 over UDP:\n%s", out)
	}
	if out := run("SOA", zone); !strings.Contains(out, "hostmaster."+zone) {
		t.Errorf("SOA:\n%s", out)
	}
	if out := run("TXT", "nope."+zone); !strings.Contains(out, "NXDOMAIN") || !strings.Contains(out, "SOA") {
		t.Errorf("NXDOMAIN:\n%s", out)
	}
	if out := run("+noedns", "+ignore", "TXT", chunk); strings.Contains(out, " tc") || !strings.Contains(out, "ANSWER: 1") {
		t.Errorf("chunk without EDNS0 over UDP should fit 512 bytes:\n%s", out)
	}
	out := run("+tcp", "TXT", chunk)
	if !strings.Contains(out, "ANSWER: 1") {
		t.Errorf("chunk over TCP:\n%s", out)
	}
	t.Logf("kdig chunk over TCP:\n%s", out)
}

// TestFetchLeavesLosers: once a resolver has given the list, Fetch returns
// without waiting for an attempt still asking a resolver that never
// answers (it used to wait for the DNS client's 2 s read timeout there:
// 2.05 s, against 0.2 s now).
func TestFetchLeavesLosers(t *testing.T) {
	checkLeaks(t)
	addr := startDNS(t, makeList(t, listKey, 2, 1, time.Now().Add(time.Hour)), nil)
	silent, err := net.ListenPacket("udp", "127.0.0.1:0") // reads nothing, answers nothing
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	f := fetcher(t, []string{"udp://" + silent.LocalAddr().String(), addr}, func(c *bootstrap.Config) {
		c.Stagger = 100 * time.Millisecond
		c.Timeout = 30 * time.Second
	})
	_, took, err := fetch(t, f)
	if err != nil {
		t.Fatal(err)
	}
	if took > 1500*time.Millisecond {
		t.Errorf("Fetch took %v: it waited for the silent resolver's attempt", took)
	}
}
