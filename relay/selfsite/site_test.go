package selfsite

import (
	"bytes"
	"context"
	"crypto/tls"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mholt/acmez/v3"
	"go.uber.org/zap"

	"github.com/merpati/merpati/transport/quiccarrier"
)

// startOffline starts a site whose CA is never reached (nothing listens
// at its address), so it serves the placeholder.
func startOffline(t *testing.T) *Site {
	t.Helper()
	dir := t.TempDir()
	if err := WriteDefaultSite(filepath.Join(dir, "site")); err != nil {
		t.Fatal(err)
	}
	site, err := Start(t.Context(), Config{
		Domain:  testDomain,
		Dir:     filepath.Join(dir, "site"),
		CA:      "https://127.0.0.1:1/dir",
		Storage: filepath.Join(dir, "acme"),
		Logger:  testLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { site.Close() })
	return site
}

// TestPlaceholder checks what the site serves before it has a
// certificate: a self-signed one for its domain, on TCP and on QUIC (the
// relay's check of its cover site's HTTP/3 passes), and nothing for other
// names or for challenges not under way.
func TestPlaceholder(t *testing.T) {
	site := startOffline(t)
	tcp, udp := site.TCPAddr().(*net.TCPAddr), site.UDPAddr().(*net.UDPAddr)
	if tcp.Port != udp.Port || !tcp.IP.Equal(udp.IP) || !tcp.IP.IsLoopback() {
		t.Errorf("TCP %s and UDP %s: want one loopback address and port", tcp, udp)
	}

	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	if _, err := quiccarrier.CheckCover(ctx, tcp.String(), testDomain); err != nil {
		t.Errorf("relay's HTTP/3 check of the cover site: %v", err)
	}

	handshake := func(serverName string, protos ...string) (*tls.ConnectionState, error) {
		d := tls.Dialer{Config: &tls.Config{ServerName: serverName, NextProtos: protos, InsecureSkipVerify: true}}
		c, err := d.DialContext(ctx, "tcp", tcp.String())
		if err != nil {
			return nil, err
		}
		defer c.Close()
		st := c.(*tls.Conn).ConnectionState()
		return &st, nil
	}
	st, err := handshake(testDomain, "h2", "http/1.1")
	if err != nil {
		t.Fatalf("handshake for %s: %v", testDomain, err)
	}
	leaf := st.PeerCertificates[0]
	if err := leaf.VerifyHostname(testDomain); err != nil || !bytes.Equal(leaf.RawIssuer, leaf.RawSubject) {
		t.Errorf("placeholder: %v, issuer %s; want self-signed for %s", err, leaf.Issuer, testDomain)
	}
	if st.NegotiatedProtocol != "h2" {
		t.Errorf("ALPN %q, want h2", st.NegotiatedProtocol)
	}
	if _, err := handshake("other.example.com", "h2"); err == nil {
		t.Error("handshake for another name succeeded; Caddy refuses names it has no certificate for")
	}
	if _, err := handshake(testDomain, acmez.ACMETLS1Protocol); err == nil {
		t.Error("acme-tls/1 handshake with no challenge under way succeeded")
	}
}

// TestIssuerSettings checks the ACME settings that the test CA does not
// exercise: in the lab, whatever certmagic binds for its own challenge
// server is free, and anything serves as an account address.
func TestIssuerSettings(t *testing.T) {
	site := startOffline(t)
	if len(site.cm.Issuers) != 1 {
		t.Fatalf("%d issuers, want 1", len(site.cm.Issuers))
	}
	np, ok := site.cm.Issuers[0].(noPrompt)
	if !ok {
		t.Fatalf("issuer is %T, want noPrompt (no email address)", site.cm.Issuers[0])
	}
	iss := np.ACMEIssuer
	tcp := site.TCPAddr().(*net.TCPAddr)
	// certmagic must find its challenge address taken by this site, not
	// try the relay's public port 443.
	if iss.ListenHost != tcp.IP.String() || iss.AltTLSALPNPort != tcp.Port {
		t.Errorf("challenge address %s:%d, want the site's %s", iss.ListenHost, iss.AltTLSALPNPort, tcp)
	}
	if !iss.DisableHTTPChallenge || iss.DisableTLSALPNChallenge || !iss.Agreed || iss.CA != "https://127.0.0.1:1/dir" {
		t.Errorf("issuer: HTTP-01 off %v, TLS-ALPN-01 off %v, agreed %v, CA %q",
			iss.DisableHTTPChallenge, iss.DisableTLSALPNChallenge, iss.Agreed, iss.CA)
	}
}

// TestClose checks that Close stops the listeners and may be called
// again.
func TestClose(t *testing.T) {
	site := startOffline(t)
	addr := site.TCPAddr().String()
	if err := site.Close(); err != nil {
		t.Fatal(err)
	}
	if err := site.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if c, err := net.DialTimeout("tcp", addr, 5*time.Second); err == nil {
		c.Close()
		t.Error("TCP listener still open after Close")
	}
}

// TestStartErrors checks that Start refuses what cannot work, naming the
// field.
func TestStartErrors(t *testing.T) {
	dir := t.TempDir()
	good := Config{Domain: testDomain, Dir: dir, Storage: filepath.Join(dir, "acme")}
	tests := []struct {
		edit func(*Config)
		want string
	}{
		{func(c *Config) { c.Dir = filepath.Join(dir, "missing") }, "Config.Dir"},
		{func(c *Config) { c.Domain = "" }, "Config.Domain"},
		{func(c *Config) { c.Listen = "0.0.0.0:0" }, "Config.Listen"},
	}
	for _, tt := range tests {
		cfg := good
		tt.edit(&cfg)
		site, err := Start(t.Context(), cfg)
		if err == nil {
			site.Close()
			t.Errorf("%+v: started", cfg)
			continue
		}
		if !strings.Contains(err.Error(), tt.want) {
			t.Errorf("error %q does not name %s", err, tt.want)
		}
	}
}

// TestValidate checks the settings Validate accepts and refuses.
func TestValidate(t *testing.T) {
	good := Config{Domain: "relay.example.net", Dir: "/srv/www", Storage: "/var/lib/merpati/acme"}
	if err := good.Validate(); err != nil {
		t.Fatalf("good config: %v", err)
	}
	tests := []struct {
		edit  func(*Config)
		field string // "" means valid
	}{
		{func(c *Config) { c.Domain = "Relay.Example.NET" }, ""},
		{func(c *Config) { c.Domain = "xn--80ak6aa92e.com" }, ""},
		{func(c *Config) { c.CA = "https://acme-staging-v02.api.letsencrypt.org/directory" }, ""},
		{func(c *Config) { c.Email = "ops@example.net" }, ""},
		{func(c *Config) { c.PublicPort = 8443 }, ""},
		{func(c *Config) { c.Listen = "127.0.0.1:8443" }, ""},
		{func(c *Config) { c.Listen = "[::1]:0" }, ""},
		{func(c *Config) { c.Domain = "" }, "Domain"},
		{func(c *Config) { c.Domain = "localhost" }, "Domain"},
		{func(c *Config) { c.Domain = "192.0.2.1" }, "Domain"},
		{func(c *Config) { c.Domain = "*.example.net" }, "Domain"},
		{func(c *Config) { c.Domain = "example.net." }, "Domain"},
		{func(c *Config) { c.Domain = "-bad.example.net" }, "Domain"},
		{func(c *Config) { c.Domain = "a..example.net" }, "Domain"},
		{func(c *Config) { c.Domain = "host.123" }, "Domain"},
		{func(c *Config) { c.Domain = strings.Repeat("a", 64) + ".net" }, "Domain"},
		{func(c *Config) { c.Dir = "" }, "Dir"},
		{func(c *Config) { c.Storage = "" }, "Storage"},
		{func(c *Config) { c.CA = "http://acme.example.net/dir" }, "CA"},
		{func(c *Config) { c.CA = "acme.example.net" }, "CA"},
		{func(c *Config) { c.Email = "not an address" }, "Email"},
		{func(c *Config) { c.PublicPort = 70000 }, "PublicPort"},
		{func(c *Config) { c.PublicPort = -1 }, "PublicPort"},
		{func(c *Config) { c.Listen = "192.0.2.1:0" }, "Listen"},
		{func(c *Config) { c.Listen = "localhost:0" }, "Listen"},
		{func(c *Config) { c.Listen = "127.0.0.1" }, "Listen"},
		{func(c *Config) { c.Listen = "127.0.0.1:99999" }, "Listen"},
	}
	for _, tt := range tests {
		c := good
		tt.edit(&c)
		err := c.Validate()
		switch {
		case tt.field == "" && err != nil:
			t.Errorf("%+v: %v", c, err)
		case tt.field != "" && err == nil:
			t.Errorf("%+v: accepted, want an error about %s", c, tt.field)
		case tt.field != "" && !strings.Contains(err.Error(), "Config."+tt.field+":"):
			t.Errorf("%+v: error %q does not name Config.%s", c, err, tt.field)
		}
	}
}

// TestZapToSlog checks that certmagic's zap logs reach the slog handler
// with their level, logger name and fields.
func TestZapToSlog(t *testing.T) {
	var buf bytes.Buffer
	h := slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo})
	zl := newZapLogger(h).Named("obtain")
	zl.Debug("hidden")
	zl.With(zap.String("identifier", "a.example")).Error("obtaining failed", zap.String("ca", "https://ca"))
	got := buf.String()
	if strings.Contains(got, "hidden") {
		t.Errorf("debug message passed an info handler: %s", got)
	}
	for _, want := range []string{"level=ERROR", `msg="obtaining failed"`, "logger=obtain", "ca=https://ca", "identifier=a.example"} {
		if !strings.Contains(got, want) {
			t.Errorf("log %q lacks %q", got, want)
		}
	}
}
