package relaytest

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/merpati/merpati/transport/tlscarrier"
)

// TestNginx loads the page from nginx over HTTP/2 and over TLS 1.2,
// checks the chain it serves, and logs the flight it answers a Chrome
// hello with.
func TestNginx(t *testing.T) {
	CheckLeaks(t)
	n := StartNginx(t)
	chain := n.Chain()
	if len(chain) != 2 || len(chain[0]) != NginxLeafLen || len(chain[1]) != NginxIntermediateLen {
		t.Fatalf("chain of %v bytes, want [%d %d]", chainLens(chain), NginxLeafLen, NginxIntermediateLen)
	}

	for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		tr := &http.Transport{
			TLSClientConfig:   &tls.Config{ServerName: CoverName, RootCAs: n.Roots(), MinVersion: v, MaxVersion: v},
			ForceAttemptHTTP2: true,
		}
		c := &http.Client{Transport: tr, Timeout: 20 * time.Second}
		resp, err := c.Get("https://" + n.Addr() + "/")
		if err != nil {
			t.Fatalf("TLS %#04x: %v", v, err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		tr.CloseIdleConnections()
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusOK || string(body) != CoverPage || resp.ProtoMajor != 2 {
			t.Errorf("TLS %#04x: %s %d %q; want HTTP/2 200 with the cover page", v, resp.Proto, resp.StatusCode, body)
		}
		if !strings.HasPrefix(resp.Header.Get("Server"), "nginx") {
			t.Errorf("TLS %#04x: Server %q, want nginx", v, resp.Header.Get("Server"))
		}
		if got := resp.TLS.PeerCertificates; len(got) != 2 || !bytes.Equal(got[0].Raw, chain[0]) || !bytes.Equal(got[1].Raw, chain[1]) {
			t.Errorf("TLS %#04x: nginx sent a chain other than its own", v)
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	f, err := tlscarrier.LearnFlight(ctx, n.Addr(), CoverName)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("nginx's flight: %v", f)
	// OpenSSL's: TLS 1.3 with X25519 (it knows no X25519MLKEM768), and
	// its two session tickets after the client's Finished.
	if f.Version != tls.VersionTLS13 || f.Group != 0x001d || f.ALPN != "h2" || f.LeafKey != "RSA-2048" {
		t.Errorf("flight %v; want TLS 1.3, X25519, h2, an RSA-2048 leaf", f)
	}
	if len(f.Tickets) != 2 || f.EarlyTickets != 0 {
		t.Errorf("tickets %v, %d early; want two after the client's Finished", f.Tickets, f.EarlyTickets)
	}
	if UDPClosed(n.Addr()) != true {
		t.Error("nginx's UDP port is open; it has no HTTP/3")
	}
	if l := n.Logs(); strings.Contains(l, "[emerg]") || strings.Contains(l, "[alert]") {
		t.Errorf("nginx logged errors:\n%s", l)
	}
}

// TestNginxConf checks that nginx's configuration keeps it on loopback
// and its files in its directory.
func TestNginxConf(t *testing.T) {
	conf := nginxConf("127.0.0.1:8443", "/tmp/x", "/tmp/x/site", "/tmp/x/c.pem", "/tmp/x/k.pem", false)
	for _, want := range []string{"listen 127.0.0.1:8443 ssl http2;", "daemon off;", "access_log off;", "ssl_session_tickets on;", "ssl_protocols TLSv1.2 TLSv1.3;"} {
		if !strings.Contains(conf, want) {
			t.Errorf("config lacks %q", want)
		}
	}
	if strings.Contains(conf, "user ") {
		t.Error("config sets a user while not root")
	}
	for line := range strings.Lines(conf) {
		for _, f := range strings.Fields(line) {
			if strings.HasPrefix(f, `"/`) && !strings.HasPrefix(f, `"/tmp/x/`) {
				t.Errorf("config names a path outside its directory: %s", strings.TrimSpace(line))
			}
		}
	}
}

func chainLens(chain [][]byte) []int {
	n := make([]int, len(chain))
	for i, c := range chain {
		n[i] = len(c)
	}
	return n
}
