package selfsite

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/miekg/dns"
	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
)

// pebblePath is where Debian's pebble package installs Pebble, Let's
// Encrypt's ACME test server.
const pebblePath = "/usr/bin/pebble"

// testDomain is the name the test site gets a certificate for; the
// test's own DNS server resolves it to 127.0.0.1 for Pebble.
const testDomain = "site.merpati.test"

// TestObtainWithPebble obtains a certificate from Pebble, over TLS-ALPN-01
// through a byte splice (standing in for the relay's), and checks that
// the site serves it, verified up to Pebble's root, on TCP and on QUIC;
// that a restarted site renews a stored certificate that is due, serving
// the old one until then; and, Pebble stopped, that a site restarted with
// the same storage serves the stored certificate without it.
func TestObtainWithPebble(t *testing.T) {
	if _, err := os.Stat(pebblePath); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("pebble is not installed (apt-get install pebble): %v", err)
		}
		t.Skipf("pebble is not installed (apt-get install pebble): %v", err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()
	dir := t.TempDir()
	siteDir, storage := filepath.Join(dir, "site"), filepath.Join(dir, "acme")
	if err := WriteDefaultSite(siteDir); err != nil {
		t.Fatal(err)
	}
	index, err := os.ReadFile(filepath.Join(siteDir, "index.html"))
	if err != nil {
		t.Fatal(err)
	}

	dnsAddr := startDNS(t, testDomain)
	pebbleRoots, certFile, keyFile := writePebbleCert(t, dir)
	cfg := Config{
		Domain:  testDomain,
		Dir:     siteDir,
		CARoots: pebbleRoots,
		Storage: storage,
		Logger:  testLogger(t),
	}
	// The CA checks the challenge at the splice, which forwards to the
	// site, as the relay's front door would.
	splice := startSplice(t)
	pb := startPebble(t, dir, certFile, keyFile, splice.addr, dnsAddr)
	cfg.CA = pb.dirURL
	site, err := Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer site.Close()
	splice.setTarget(site.TCPAddr().String())

	start := time.Now()
	if err := site.Obtain(ctx); err != nil {
		t.Fatalf("Obtain: %v\npebble:\n%s", err, pb.out.String())
	}
	t.Logf("obtained in %v; %d connections through the splice", time.Since(start).Round(time.Millisecond), splice.accepted.Load())
	if splice.accepted.Load() == 0 {
		t.Fatal("the CA's check did not come through the splice")
	}
	// Without an email address, certmagic asks for one on the terminal
	// when obtaining in the foreground, and then sets this global.
	if certmagic.DefaultACME.Agreed {
		t.Error("certmagic prompted for an email address")
	}
	root := pb.root(t, pebbleRoots)
	roots := x509.NewCertPool()
	roots.AddCert(root)

	leafTCP := checkTCP(t, site, roots, index)
	leafQUIC := checkQUIC(t, site, roots, index)
	if !bytes.Equal(leafTCP.Raw, leafQUIC.Raw) {
		t.Error("TCP and QUIC serve different certificates")
	}
	// A second Obtain has nothing to do: the CA does not check again.
	accepted := splice.accepted.Load()
	if err := site.Obtain(ctx); err != nil {
		t.Fatalf("second Obtain: %v", err)
	}
	if n := splice.accepted.Load(); n != accepted {
		t.Errorf("second Obtain: %d more connections through the splice, want none", n-accepted)
	}
	if err := site.Close(); err != nil {
		t.Fatal(err)
	}

	// Restart with the certificate due for renewal: it is served until
	// Obtain has renewed it, and then only the new one is.
	due := cfg
	due.renewalWindow = 1
	siteR, err := Start(ctx, due)
	if err != nil {
		t.Fatal(err)
	}
	defer siteR.Close()
	splice.setTarget(siteR.TCPAddr().String())
	if leaf := checkTCP(t, siteR, roots, index); !bytes.Equal(leaf.Raw, leafTCP.Raw) {
		t.Error("restarted site does not serve the stored certificate before renewing it")
	}
	if err := siteR.Obtain(ctx); err != nil {
		t.Fatalf("Obtain of a due certificate: %v\npebble:\n%s", err, pb.out.String())
	}
	renewed := checkTCP(t, siteR, roots, index)
	if bytes.Equal(renewed.Raw, leafTCP.Raw) {
		t.Fatal("due certificate not renewed")
	}
	if leaf := checkQUIC(t, siteR, roots, index); !bytes.Equal(leaf.Raw, renewed.Raw) {
		t.Error("QUIC does not serve the renewed certificate")
	}
	if n := len(siteR.cache.AllMatchingCertificates(testDomain)); n != 1 {
		t.Errorf("%d certificates cached after renewal, want 1", n)
	}
	if err := siteR.Close(); err != nil {
		t.Fatal(err)
	}

	// Restart with the CA gone: the stored certificate is served at once
	// and Obtain keeps it.
	pb.stop()
	site2, err := Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer site2.Close()
	if leaf := checkTCP(t, site2, roots, index); !bytes.Equal(leaf.Raw, renewed.Raw) {
		t.Error("restarted site serves another certificate before Obtain")
	}
	octx, ocancel := context.WithTimeout(ctx, 20*time.Second)
	defer ocancel()
	if err := site2.Obtain(octx); err != nil {
		t.Fatalf("Obtain after restart, CA stopped: %v", err)
	}
	if leaf := checkQUIC(t, site2, roots, index); !bytes.Equal(leaf.Raw, renewed.Raw) {
		t.Error("restarted site serves another certificate after Obtain")
	}
}

// checkTCP fetches / over TLS on TCP (HTTP/2), checks the certificate
// against roots for testDomain, the page and the headers, and returns the
// leaf certificate.
func checkTCP(t *testing.T, site *Site, roots *x509.CertPool, index []byte) *x509.Certificate {
	t.Helper()
	tr := &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: roots, ServerName: testDomain},
		ForceAttemptHTTP2: true,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", site.TCPAddr().String())
		},
	}
	defer tr.CloseIdleConnections()
	resp, body := get(t, &http.Client{Transport: tr, Timeout: 20 * time.Second}, http.MethodGet)
	if resp.ProtoMajor != 2 {
		t.Errorf("TCP: %s, want HTTP/2", resp.Proto)
	}
	if got, want := resp.Header.Get("Alt-Svc"), `h3=":443"; ma=2592000`; got != want {
		t.Errorf("TCP: Alt-Svc %q, want %q", got, want)
	}
	checkPage(t, "TCP", resp, body, index)
	return resp.TLS.PeerCertificates[0]
}

// checkQUIC fetches / over HTTP/3 and checks as checkTCP does, and that a
// POST gets 405.
func checkQUIC(t *testing.T, site *Site, roots *x509.CertPool, index []byte) *x509.Certificate {
	t.Helper()
	tr := &http3.Transport{
		TLSClientConfig: &tls.Config{RootCAs: roots, ServerName: testDomain},
		Dial: func(ctx context.Context, _ string, tlsConf *tls.Config, conf *quic.Config) (*quic.Conn, error) {
			return quic.DialAddrEarly(ctx, site.UDPAddr().String(), tlsConf, conf)
		},
	}
	defer tr.Close()
	client := &http.Client{Transport: tr, Timeout: 20 * time.Second}
	resp, body := get(t, client, http.MethodGet)
	if resp.ProtoMajor != 3 {
		t.Errorf("QUIC: %s, want HTTP/3", resp.Proto)
	}
	if v := resp.Header.Get("Alt-Svc"); v != "" {
		t.Errorf("QUIC: Alt-Svc %q, want none (Caddy sends it on TCP only)", v)
	}
	checkPage(t, "QUIC", resp, body, index)
	if post, _ := get(t, client, http.MethodPost); post.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("QUIC: POST / got %s, want 405", post.Status)
	}
	return resp.TLS.PeerCertificates[0]
}

// get sends a request for https://testDomain/.
func get(t *testing.T, c *http.Client, method string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, "https://"+testDomain+"/", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s /: %v", method, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s /: %v", method, err)
	}
	return resp, body
}

// checkPage checks a response to GET / and its certificate.
func checkPage(t *testing.T, tr string, resp *http.Response, body, index []byte) {
	t.Helper()
	if resp.StatusCode != http.StatusOK || !bytes.Equal(body, index) {
		t.Errorf("%s: GET / got %s, %d bytes; want 200 and index.html (%d bytes)", tr, resp.Status, len(body), len(index))
	}
	if v := resp.Header.Get("Server"); v != "Caddy" {
		t.Errorf("%s: Server %q, want Caddy", tr, v)
	}
	leaf := resp.TLS.PeerCertificates[0]
	if err := leaf.VerifyHostname(testDomain); err != nil {
		t.Errorf("%s: %v", tr, err)
	}
	if len(resp.TLS.VerifiedChains) == 0 {
		t.Errorf("%s: certificate not verified", tr)
	}
}

// startDNS starts a DNS server on 127.0.0.1 (UDP and TCP, one port) that
// resolves domain to 127.0.0.1 and answers no other records.
func startDNS(t *testing.T, domain string) string {
	t.Helper()
	fqdn := dns.Fqdn(domain)
	handler := dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(q)
		m.Authoritative = true
		if len(q.Question) != 1 || !strings.EqualFold(q.Question[0].Name, fqdn) {
			m.Rcode = dns.RcodeNameError
		} else if q.Question[0].Qtype == dns.TypeA {
			m.Answer = []dns.RR{&dns.A{
				Hdr: dns.RR_Header{Name: q.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60},
				A:   net.IPv4(127, 0, 0, 1),
			}}
		}
		w.WriteMsg(m)
	})
	var (
		ln  net.Listener
		pc  net.PacketConn
		err error
	)
	if ln, pc, err = listenBoth(t.Context(), "127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	servers := []*dns.Server{{PacketConn: pc, Handler: handler}, {Listener: ln, Handler: handler}}
	var wg sync.WaitGroup
	for _, s := range servers {
		started := make(chan struct{})
		s.NotifyStartedFunc = func() { close(started) }
		wg.Go(func() { s.ActivateAndServe() })
		<-started
	}
	t.Cleanup(func() {
		for _, s := range servers {
			s.Shutdown()
		}
		wg.Wait()
	})
	return ln.Addr().String()
}

// writePebbleCert writes a self-signed certificate for Pebble's HTTPS
// listeners (Debian's package ships none) and returns the pool that
// trusts it.
func writePebbleCert(t *testing.T, dir string) (*x509.CertPool, string, string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "pebble test listener"},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := filepath.Join(dir, "pebble-cert.pem"), filepath.Join(dir, "pebble-key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return pool, certFile, keyFile
}

// A splice forwards each TCP connection it accepts, byte for byte, to its
// target, as the relay's front door does with connections that do not
// authenticate.
type splice struct {
	addr     string
	target   atomic.Pointer[string]
	accepted atomic.Int64
}

func startSplice(t *testing.T) *splice {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &splice{addr: ln.Addr().String()}
	s.setTarget("127.0.0.1:1")
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.accepted.Add(1)
			wg.Go(func() {
				defer c.Close()
				u, err := net.Dial("tcp", *s.target.Load())
				if err != nil {
					return
				}
				defer u.Close()
				done := make(chan struct{})
				go func() {
					io.Copy(u, c)
					u.(*net.TCPConn).CloseWrite()
					close(done)
				}()
				io.Copy(c, u)
				c.(*net.TCPConn).CloseWrite()
				<-done
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	return s
}

func (s *splice) setTarget(addr string) { s.target.Store(&addr) }

// A pebble is a running Pebble.
type pebble struct {
	dirURL, mgmt string
	out          *syncBuffer
	stop         func()
}

// startPebble starts Pebble on 127.0.0.1, validating TLS-ALPN-01 at
// tlsAddr's port and resolving names with dnsAddr, and waits until its
// directory answers. It is stopped at the end of the test at the latest.
func startPebble(t *testing.T, dir, certFile, keyFile, tlsAddr, dnsAddr string) *pebble {
	t.Helper()
	_, tlsPort, _ := net.SplitHostPort(tlsAddr)
	var lastErr error
	// Another process may take a port between our probe and Pebble's
	// bind; Pebble then exits, and we try others.
	for range 5 {
		ports := freePorts(t, 3)
		config := map[string]any{"pebble": map[string]any{
			"listenAddress":                  fmt.Sprintf("127.0.0.1:%d", ports[0]),
			"managementListenAddress":        fmt.Sprintf("127.0.0.1:%d", ports[1]),
			"certificate":                    certFile,
			"privateKey":                     keyFile,
			"httpPort":                       ports[2],
			"tlsPort":                        json.Number(tlsPort),
			"ocspResponderURL":               "",
			"externalAccountBindingRequired": false,
		}}
		data, err := json.Marshal(config)
		if err != nil {
			t.Fatal(err)
		}
		configFile := filepath.Join(dir, "pebble.json")
		if err := os.WriteFile(configFile, data, 0o600); err != nil {
			t.Fatal(err)
		}
		pb := &pebble{
			dirURL: fmt.Sprintf("https://127.0.0.1:%d/dir", ports[0]),
			mgmt:   fmt.Sprintf("https://127.0.0.1:%d", ports[1]),
			out:    &syncBuffer{},
		}
		cmd := exec.Command(pebblePath, "-config", configFile, "-dnsserver", dnsAddr)
		cmd.Dir = dir
		// No always-valid or authorization reuse: the challenge must
		// really be answered.
		cmd.Env = []string{"PATH=/usr/bin:/bin", "HOME=" + dir,
			"PEBBLE_VA_NOSLEEP=1", "PEBBLE_WFE_NONCEREJECT=0", "PEBBLE_AUTHZREUSE=0"}
		cmd.Stdout, cmd.Stderr = pb.out, pb.out
		if err := cmd.Start(); err != nil {
			t.Fatalf("start pebble: %v", err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		var once sync.Once
		pb.stop = func() {
			once.Do(func() {
				cmd.Process.Signal(syscall.SIGTERM)
				select {
				case <-exited:
				case <-time.After(10 * time.Second):
					cmd.Process.Kill()
					<-exited
				}
			})
		}
		if lastErr = pb.waitReady(exited, certPool(t, certFile)); lastErr == nil {
			t.Cleanup(pb.stop)
			return pb
		}
		pb.stop()
		t.Logf("pebble: %v\n%s", lastErr, pb.out.String())
	}
	t.Fatalf("pebble did not start: %v", lastErr)
	return nil
}

// waitReady waits for Pebble's directory to answer.
func (pb *pebble) waitReady(exited <-chan error, pool *x509.CertPool) error {
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}, Timeout: 5 * time.Second}
	defer c.CloseIdleConnections()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		select {
		case err := <-exited:
			return fmt.Errorf("pebble exited: %v", err)
		default:
		}
		resp, err := c.Get(pb.dirURL)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = errors.New(resp.Status)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("pebble does not answer: %w", err)
		}
	}
}

// root fetches Pebble's root certificate (made anew at each start) from
// its management interface.
func (pb *pebble) root(t *testing.T, pool *x509.CertPool) *x509.Certificate {
	t.Helper()
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}, Timeout: 10 * time.Second}
	defer c.CloseIdleConnections()
	resp, err := c.Get(pb.mgmt + "/roots/0")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(data)
	if block == nil {
		t.Fatalf("pebble root: no PEM in %q", data)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

func certPool(t *testing.T, certFile string) *x509.CertPool {
	t.Helper()
	data, err := os.ReadFile(certFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(data)
	return pool
}

// freePorts returns n TCP ports of 127.0.0.1 free a moment ago.
func freePorts(t *testing.T, n int) []int {
	t.Helper()
	var ports []int
	var lns []net.Listener
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		lns = append(lns, ln)
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	for _, ln := range lns {
		ln.Close()
	}
	return ports
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

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// testLogger logs to the test, at debug level.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// tWriter writes to the test log.
type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}
