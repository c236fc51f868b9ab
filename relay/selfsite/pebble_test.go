package selfsite_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"

	"github.com/merpati/merpati/relay/relaytest"
	"github.com/merpati/merpati/relay/selfsite"
)

// testDomain is the name the test site gets a certificate for; the
// Pebble harness's DNS server resolves it to 127.0.0.1.
const testDomain = "site.merpati.test"

// TestObtainWithPebble obtains a certificate from Pebble, over TLS-ALPN-01
// through a byte splice (standing in for the relay's), and checks that
// the site serves it, verified up to Pebble's root, on TCP and on QUIC;
// that a restarted site renews a stored certificate that is due, serving
// the old one until then; and, Pebble stopped, that a site restarted with
// the same storage serves the stored certificate without it.
func TestObtainWithPebble(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()
	dir := t.TempDir()
	siteDir, storage := filepath.Join(dir, "site"), filepath.Join(dir, "acme")
	if err := selfsite.WriteDefaultSite(siteDir); err != nil {
		t.Fatal(err)
	}
	index, err := os.ReadFile(filepath.Join(siteDir, "index.html"))
	if err != nil {
		t.Fatal(err)
	}

	// The CA checks the challenge at the splice, which forwards to the
	// site, as the relay's front door would.
	splice := startSplice(t)
	_, port, _ := net.SplitHostPort(splice.addr)
	tlsPort, _ := strconv.Atoi(port)
	pb := relaytest.StartPebble(t, relaytest.PebbleOptions{Domain: testDomain, TLSPort: tlsPort})
	cfg := selfsite.Config{
		Domain:  testDomain,
		Dir:     siteDir,
		CA:      pb.DirURL,
		CARoots: pb.Roots,
		Storage: storage,
		Logger:  testLogger(t),
	}
	site, err := selfsite.Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer site.Close()
	splice.setTarget(site.TCPAddr().String())

	start := time.Now()
	if err := site.Obtain(ctx); err != nil {
		t.Fatalf("Obtain: %v\npebble:\n%s", err, pb.Logs.String())
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
	roots := x509.NewCertPool()
	roots.AddCert(pb.Root)

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
	selfsite.SetRenewalWindow(&due, 1)
	siteR, err := selfsite.Start(ctx, due)
	if err != nil {
		t.Fatal(err)
	}
	defer siteR.Close()
	splice.setTarget(siteR.TCPAddr().String())
	if leaf := checkTCP(t, siteR, roots, index); !bytes.Equal(leaf.Raw, leafTCP.Raw) {
		t.Error("restarted site does not serve the stored certificate before renewing it")
	}
	if err := siteR.Obtain(ctx); err != nil {
		t.Fatalf("Obtain of a due certificate: %v\npebble:\n%s", err, pb.Logs.String())
	}
	renewed := checkTCP(t, siteR, roots, index)
	if bytes.Equal(renewed.Raw, leafTCP.Raw) {
		t.Fatal("due certificate not renewed")
	}
	if leaf := checkQUIC(t, siteR, roots, index); !bytes.Equal(leaf.Raw, renewed.Raw) {
		t.Error("QUIC does not serve the renewed certificate")
	}
	if n := selfsite.CachedCertificates(siteR, testDomain); n != 1 {
		t.Errorf("%d certificates cached after renewal, want 1", n)
	}
	if err := siteR.Close(); err != nil {
		t.Fatal(err)
	}

	// Restart with the CA gone: the stored certificate is served at once
	// and Obtain keeps it.
	pb.Stop()
	site2, err := selfsite.Start(ctx, cfg)
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
func checkTCP(t *testing.T, site *selfsite.Site, roots *x509.CertPool, index []byte) *x509.Certificate {
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
func checkQUIC(t *testing.T, site *selfsite.Site, roots *x509.CertPool, index []byte) *x509.Certificate {
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
