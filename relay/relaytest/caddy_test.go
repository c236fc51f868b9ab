package relaytest

import (
	"bytes"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestCaddy probes a real HTTP/3 server, Caddy, over QUIC and over TCP,
// logs what a prober sees, and checks that Caddy stayed on the machine.
func TestCaddy(t *testing.T) {
	CheckLeaks(t)
	c := StartCaddy(t)
	ctx := probeCtx(t)
	a, err := ProbeQUIC(ctx, c.Addr())
	if err != nil {
		t.Fatal(err)
	}
	b, err := ProbeQUIC(ctx, c.Addr())
	if err != nil {
		t.Fatal(err)
	}
	h, err := ProbeH2(ctx, c.Addr())
	if err != nil {
		t.Fatal(err)
	}
	logView(t, "Caddy", a, h)
	if d := a.Diff(b); len(d) > 0 {
		t.Errorf("two probes of Caddy differ:\n%s", strings.Join(d, "\n"))
	}
	if a.Status != http.StatusOK || string(a.Body) != CoverPage || !bytes.Equal(a.Body, h.Body) {
		t.Errorf("h3 %d %q, h2 %q; want the cover page on both", a.Status, a.Body, h.Body)
	}
	if len(a.Certs) != 1 || !bytes.Equal(a.Certs[0], c.Cert()) || !equalChains(a.Certs, h.Certs) {
		t.Error("Caddy showed a certificate other than its own")
	}
	if a.ALPN != "h3" || a.TransportParams == nil || a.Settings == nil || len(a.Handshake) == 0 {
		t.Errorf("incomplete view: ALPN %q, TPs %v, SETTINGS %v, handshake %v", a.ALPN, a.TransportParams, a.Settings, a.Handshake)
	}
	if h.Header.Get("Alt-Svc") == "" {
		t.Error("Caddy's h2 answer has no Alt-Svc")
	}
	if UDPClosed(c.Addr()) {
		t.Error("UDPClosed = true for Caddy")
	}
	for line := range strings.Lines(c.Logs()) {
		if l := strings.ToLower(line); strings.Contains(l, "acme") || strings.Contains(l, "ocsp") {
			t.Errorf("Caddy logged about ACME or OCSP: %s", line)
		}
	}
}

// TestCaddyConfig checks that the configuration check refuses what would
// take Caddy off the machine.
func TestCaddyConfig(t *testing.T) {
	if _, err := os.Stat(CaddyPath); err != nil {
		t.Skip("caddy is not installed")
	}
	dir := t.TempDir()
	good := caddyfile("127.0.0.1:8443", dir, dir, "c.pem", "k.pem")
	for name, cfg := range map[string]string{
		"good":          good,
		"all addresses": strings.Replace(good, "\tbind 127.0.0.1\n", "", 1),
		"OCSP":          strings.Replace(good, "\tocsp_stapling off\n", "", 1),
		"auto HTTPS":    strings.Replace(good, "\tauto_https off\n", "", 1),
		"admin":         strings.Replace(good, "\tadmin off\n", "", 1),
	} {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
			t.Fatal(err)
		}
		err := checkCaddyConfig(dir, path)
		if (err == nil) != (name == "good") {
			t.Errorf("%s: checkCaddyConfig = %v", name, err)
		}
	}
}

func TestParseProcAddr(t *testing.T) {
	for in, want := range map[string]string{
		"0100007F:1F90":                         "127.0.0.1:8080",
		"00000000:0000":                         "0.0.0.0:0",
		"00000000000000000000000001000000:01BB": "[::1]:443",
		"0000000000000000FFFF00000100007F:0050": "127.0.0.1:80",
	} {
		got, err := parseProcAddr(in)
		if err != nil || got.String() != want {
			t.Errorf("parseProcAddr(%q) = %v, %v; want %s", in, got, err, want)
		}
	}
}
