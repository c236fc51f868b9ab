package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"

	"github.com/merpati/merpati/relay"
	"github.com/merpati/merpati/relay/relaytest"
	"github.com/merpati/merpati/transport"
	"github.com/merpati/merpati/transport/link"
)

// siteDomain is the name the relay's own site is for in these tests; the
// Pebble harness's DNS server resolves it to 127.0.0.1.
const siteDomain = "site.merpati.test"

// TestSelfSite runs, as an operator would, `init --domain` and `run` with
// Pebble as the CA, whose TLS-ALPN-01 check goes to the relay's listen
// port: the relay obtains its site's certificate through its own front
// door. Then probers on TCP and on QUIC see the site's default page under
// the Pebble-issued certificate for the domain, the same on both; key
// holders' sessions over TLS and QUIC reach a datacenter; the log says
// what the relay did; and doctor reports the site, the stored
// certificate, and the site through the running relay.
func TestSelfSite(t *testing.T) {
	addr := relaytest.FreeAddr(t)
	_, portStr, _ := net.SplitHostPort(addr)
	port, _ := strconv.Atoi(portStr)
	pb := relaytest.StartPebble(t, relaytest.PebbleOptions{Domain: siteDomain, TLSPort: port})
	echo := relaytest.StartEcho(t)
	httpAddr := relaytest.FreeAddr(t)
	dir := filepath.Join(t.TempDir(), "relay")
	out, err := runCmd(t, "init", "--dir", dir, "--domain", siteDomain, "--listen", addr, "--public", addr,
		"--acme-ca", pb.DirURL, "--acme-roots", pb.RootsFile, "--acme-email", "ops@merpati.test",
		"--http-listen", httpAddr, "--dc", "2="+echo, "--allow", "127.0.0.0/8")
	if err != nil {
		t.Fatalf("init: %v\n%s", err, out)
	}
	for _, want := range []string{"its own cover site for " + siteDomain, "DNS A record", "port 443 on TCP and UDP", pb.DirURL} {
		if !strings.Contains(out, want) {
			t.Errorf("init's output lacks %q:\n%s", want, out)
		}
	}
	owner := linkIn(t, out)
	if owner.SNI != siteDomain || !slices.Equal(owner.Carriers, []string{link.CarrierTLS, link.CarrierQUIC}) {
		t.Errorf("link: SNI %q, carriers %v; want %s, tls and quic", owner.SNI, owner.Carriers, siteDomain)
	}
	index, err := os.ReadFile(filepath.Join(dir, relay.SiteDir, "index.html"))
	if err != nil {
		t.Fatalf("default site: %v", err)
	}

	var logs syncBuffer
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, []string{"run", "--dir", dir, "--log-level", "debug"}, &logs, &logs) }()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	}
	defer func() {
		stop()
		if t.Failed() {
			t.Logf("relay's log:\n%s\npebble:\n%s", logs.String(), pb.Logs.String())
		}
	}()
	waitLog := func(s string) {
		t.Helper()
		for deadline := time.Now().Add(45 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			if strings.Contains(logs.String(), s) {
				return
			}
		}
		t.Fatalf("the relay never logged %s", s)
	}
	waitLog(`msg="cover site certificate in force"`)
	for _, want := range []string{
		`msg="cover: the relay's own site for ` + siteDomain + `"`,
		`issuer="CN=Pebble Intermediate`,
	} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("the relay did not log %s", want)
		}
	}
	// Plain HTTP redirects to the site, as a web server's port 80 does.
	noFollow := &http.Client{
		Timeout:       10 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	req, _ := http.NewRequest(http.MethodGet, "http://"+httpAddr+"/notes/?a=b", nil)
	req.Host = siteDomain
	if resp, err := noFollow.Do(req); err != nil {
		t.Errorf("plain HTTP: %v", err)
	} else {
		resp.Body.Close()
		want := "https://" + net.JoinHostPort(siteDomain, portStr) + "/notes/?a=b"
		if resp.StatusCode != http.StatusPermanentRedirect || resp.Header.Get("Location") != want {
			t.Errorf("plain HTTP: %s to %q, want 308 to %q", resp.Status, resp.Header.Get("Location"), want)
		}
	}
	// The CA's checks came through the front door.
	if !strings.Contains(logs.String(), `msg="connection sent to cover site"`) {
		t.Error("no connection went through the front door to the site")
	}
	// Key holders' flight was learned at start (the placeholder's: a
	// chain of one) and again with the certificate (leaf and Pebble's
	// intermediate).
	flights := regexp.MustCompile(`msg="key holders' TLS flight follows the cover site's" flight=".*chain \[([0-9 ]+)\]`).
		FindAllStringSubmatch(logs.String(), -1)
	if len(flights) < 2 || len(strings.Fields(flights[len(flights)-1][1])) != 2 {
		t.Errorf("key holders' flight learned %d times, last with chain %v; want at least 2, the last with 2 certificates", len(flights), flights)
	}

	roots := x509.NewCertPool()
	roots.AddCert(pb.Root)
	leafTCP := getSite(t, "TCP", siteClientTCP(addr, roots), index)
	leafQUIC := getSite(t, "QUIC", siteClientQUIC(t, addr, roots), index)
	if !bytes.Equal(leafTCP.Raw, leafQUIC.Raw) {
		t.Error("TCP and QUIC show different certificates")
	}
	if _, ok := leafTCP.PublicKey.(*ecdsa.PublicKey); !ok {
		t.Errorf("site's key is %T, want ECDSA", leafTCP.PublicKey)
	}
	d, err := relay.LoadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if k, ok := d.Certificate.PrivateKey.(*ecdsa.PrivateKey); !ok || k.Curve != elliptic.P256() {
		t.Errorf("relay's key is %T, want ECDSA P-256 as the site's", d.Certificate.PrivateKey)
	}

	for _, carrier := range []string{link.CarrierTLS, link.CarrierQUIC} {
		l := *owner
		l.Carriers = []string{carrier}
		sess, err := relaytest.Session(t, &l, carrier)
		if err != nil {
			t.Fatalf("%s session: %v", carrier, err)
		}
		st, err := relaytest.Open(sess, transport.DCTarget(2))
		if err != nil {
			t.Fatalf("%s stream: %v", carrier, err)
		}
		msg := []byte("through the relay's own site's front door over " + carrier)
		st.SetDeadline(time.Now().Add(30 * time.Second))
		if _, err := st.Write(msg); err != nil {
			t.Fatalf("%s stream: %v", carrier, err)
		}
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(st, got); err != nil || !bytes.Equal(got, msg) {
			t.Errorf("%s stream: read %q, %v", carrier, got, err)
		}
		st.Close()
		sess.Close()
	}

	out, err = doctorCmd(t, dir)
	t.Logf("doctor, relay running:\n%s", out)
	if err != nil {
		t.Errorf("doctor: %v", err)
	}
	for _, want := range []struct{ level, check, text string }{
		{"OK", "domain", "its own cover site for " + siteDomain},
		{"OK", "site", "has index.html"},
		{"OK", "acme", "private to the relay's user (mode 0700)"},
		{"OK", "cert", "certificate for " + siteDomain + " stored, issued by Pebble Intermediate"},
		{"OK", "cover", "answers a Chrome hello with TLS 1.3"},
		{"OK", "quic", "answers HTTP/3 through the relay's UDP " + addr},
		{"OK", "clock", "the ACME CA's"},
		{"WARN", "acme", "the CA checks " + siteDomain + ":443"},
		{"OK", "listen", "served by the running relay"},
	} {
		if !hasLine(out, want.level, want.check, want.text) {
			t.Errorf("doctor: no %s %s line with %q", want.level, want.check, want.text)
		}
	}

	// Stopped: doctor does not reach the site, and still sees the stored
	// certificate.
	stop()
	out, err = doctorCmd(t, dir)
	if err != nil || !hasLine(out, "OK", "cover", "not checked") || !hasLine(out, "OK", "cert", "stored") {
		t.Errorf("doctor, relay stopped: %v\n%s", err, out)
	}
}

// siteClientTCP returns a client of the site at addr, over TLS on TCP,
// trusting roots.
func siteClientTCP(addr string, roots *x509.CertPool) *http.Client {
	return &http.Client{
		Timeout: 20 * time.Second,
		Transport: &http.Transport{
			TLSClientConfig:   &tls.Config{RootCAs: roots, ServerName: siteDomain},
			ForceAttemptHTTP2: true,
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return (&net.Dialer{}).DialContext(ctx, "tcp", addr)
			},
		},
	}
}

// siteClientQUIC returns a client of the site at addr, over HTTP/3,
// trusting roots.
func siteClientQUIC(t *testing.T, addr string, roots *x509.CertPool) *http.Client {
	tr := &http3.Transport{
		TLSClientConfig: &tls.Config{RootCAs: roots, ServerName: siteDomain},
		Dial: func(ctx context.Context, _ string, tlsConf *tls.Config, conf *quic.Config) (*quic.Conn, error) {
			return quic.DialAddrEarly(ctx, addr, tlsConf, conf)
		},
	}
	t.Cleanup(func() { tr.Close() })
	return &http.Client{Timeout: 20 * time.Second, Transport: tr}
}

// getSite fetches https://siteDomain/ with c and checks that it is index
// under a certificate for siteDomain verified by c's roots; it returns
// the leaf.
func getSite(t *testing.T, what string, c *http.Client, index []byte) *x509.Certificate {
	t.Helper()
	defer c.CloseIdleConnections()
	resp, err := c.Get("https://" + siteDomain + "/")
	if err != nil {
		t.Fatalf("%s: GET /: %v", what, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s: GET /: %v", what, err)
	}
	if resp.StatusCode != http.StatusOK || !bytes.Equal(body, index) {
		t.Errorf("%s: GET / got %s, %d bytes; want 200 and the default index.html (%d bytes)", what, resp.Status, len(body), len(index))
	}
	if len(resp.TLS.VerifiedChains) == 0 {
		t.Fatalf("%s: certificate not verified", what)
	}
	leaf := resp.TLS.PeerCertificates[0]
	if err := leaf.VerifyHostname(siteDomain); err != nil {
		t.Errorf("%s: %v", what, err)
	}
	t.Logf("%s: %s, certificate for %v issued by %s", what, resp.Proto, leaf.DNSNames, leaf.Issuer)
	return leaf
}

// TestInitDomain checks init --domain without running the relay: the
// settings it writes, the default site, its refusals, and that an
// operator's site is left alone.
func TestInitDomain(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "relay")
	out, err := runCmd(t, "init", "--dir", dir, "--domain", "relay.example.net")
	if err != nil {
		t.Fatalf("init: %v\n%s", err, out)
	}
	b, err := os.ReadFile(filepath.Join(dir, relay.SettingsFile))
	if err != nil {
		t.Fatal(err)
	}
	var raw map[string]any
	if err := json.Unmarshal(b, &raw); err != nil {
		t.Fatal(err)
	}
	if raw["domain"] != "relay.example.net" || raw["cover"] != nil || raw["no_quic"] != nil {
		t.Errorf("relay.json: %s", b)
	}
	l := linkIn(t, out)
	if !slices.Equal(l.Relays, []string{"relay.example.net:443"}) || l.SNI != "relay.example.net" {
		t.Errorf("link: relays %v, SNI %q", l.Relays, l.SNI)
	}
	if !strings.Contains(out, "Let's Encrypt") {
		t.Errorf("init does not say where the certificate comes from:\n%s", out)
	}
	for _, f := range []string{"index.html", "robots.txt"} {
		if _, err := os.Stat(filepath.Join(dir, relay.SiteDir, f)); err != nil {
			t.Errorf("default site: %v", err)
		}
	}

	// An operator's own site, given with --site: kept as it is.
	own := t.TempDir()
	page := []byte("<!doctype html><title>mine</title>")
	if err := os.WriteFile(filepath.Join(own, "index.html"), page, 0o644); err != nil {
		t.Fatal(err)
	}
	dir2 := filepath.Join(t.TempDir(), "relay")
	if out, err := runCmd(t, "init", "--dir", dir2, "--domain", "relay.example.net", "--site", own,
		"--listen", ":8443", "--quic", "off"); err != nil {
		t.Fatalf("init --site: %v\n%s", err, out)
	}
	if got, _ := os.ReadFile(filepath.Join(own, "index.html")); !bytes.Equal(got, page) {
		t.Error("init changed the operator's index.html")
	}
	if entries, _ := os.ReadDir(own); len(entries) != 1 {
		t.Errorf("init added %d files to the operator's site", len(entries)-1)
	}
	d, err := relay.LoadDir(dir2)
	if err != nil {
		t.Fatal(err)
	}
	if d.SitePath() != own || !slices.Equal(d.Settings.Public, []string{"relay.example.net:8443"}) || !d.Settings.NoQUIC {
		t.Errorf("site %q, public %v, no_quic %v", d.SitePath(), d.Settings.Public, d.Settings.NoQUIC)
	}

	for _, args := range [][]string{
		{"--domain", "relay.example.net", "--cover", "https://www.example.org"},
		{"--domain", "relay.example.net", "--sni", "www.example.org"},
		{"--domain", "203.0.113.7"},
		{"--domain", "localhost"},
		{"--domain", "relay.example.net", "--acme-ca", "http://ca.example/dir"},
		{"--domain", "relay.example.net", "--acme-roots", filepath.Join(own, "index.html")},
		{"--cover", "https://www.example.org", "--public", "r:443", "--site", own},
		{"--cover", "https://www.example.org", "--public", "r:443", "--acme-email", "a@b.example"},
	} {
		d := filepath.Join(t.TempDir(), "relay")
		if out, err := runCmd(t, append([]string{"init", "--offline", "--dir", d}, args...)...); err == nil {
			t.Errorf("init %q succeeded:\n%s", args, out)
		}
		if _, err := os.Stat(filepath.Join(d, relay.SettingsFile)); err == nil {
			t.Errorf("init %q wrote %s", args, relay.SettingsFile)
		}
	}
}
