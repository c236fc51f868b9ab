package bootstrap_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"encoding/base64"
	"net"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	utls "github.com/refraction-networking/utls"

	"github.com/merpati/merpati/client/bootstrap"
	"github.com/merpati/merpati/relay/dnsserver"
	"github.com/merpati/merpati/transport/hello"
	"github.com/merpati/merpati/transport/hello/ja4"
	"github.com/merpati/merpati/transport/tlscarrier"
)

// teeConn keeps a copy of what is written to it.
type teeConn struct {
	net.Conn
	mu  sync.Mutex
	out bytes.Buffer
}

func (c *teeConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	c.out.Write(b)
	c.mu.Unlock()
	return c.Conn.Write(b)
}

func (c *teeConn) written() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return bytes.Clone(c.out.Bytes())
}

// startDoH serves the list for zone over DNS over HTTPS (RFC 8484, GET,
// HTTP/2) on a loopback port, as resolver.merpati.test, and returns the
// port and the roots that trust its certificate.
func startDoH(t *testing.T, list []byte) (string, *tls.Config) {
	t.Helper()
	s, err := dnsserver.New(dnsserver.Config{Zone: zone, Audiences: []dnsserver.Audience{{Key: bootKey, Lists: [][]byte{list}}}})
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile, roots := testCert(t, t.TempDir())
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2", "http/1.1"}},
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			wire, err := base64.RawURLEncoding.DecodeString(r.URL.Query().Get("dns"))
			q := new(dns.Msg)
			if err != nil || q.Unpack(wire) != nil {
				http.Error(w, "bad query", http.StatusBadRequest)
				return
			}
			out, err := s.Answer(q, &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)}, false).Pack()
			if err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return
			}
			w.Header().Set("Content-Type", "application/dns-message")
			w.Write(out)
		}),
	}
	done := make(chan struct{})
	go func() { defer close(done); srv.ServeTLS(ln, "", "") }()
	t.Cleanup(func() { srv.Close(); <-done })
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	return port, &tls.Config{RootCAs: roots}
}

// chromeHello returns the first record of the hello tlscarrier's
// ChromeClient sends to serverName offering h2 and http/1.1, as DoH
// does.
func chromeHello(t *testing.T, serverName string) *hello.ClientHello {
	t.Helper()
	c, s := net.Pipe()
	uc, err := tlscarrier.ChromeClient(c, &utls.Config{ServerName: serverName, NextProtos: []string{"h2", "http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		uc.HandshakeContext(ctx) // fails when s closes
	}()
	rec, err := hello.ReadRecord(s)
	s.Close()
	c.Close()
	<-done
	if err != nil {
		t.Fatal(err)
	}
	h, err := hello.Parse(rec)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// TestDoHChromeHello fetches a list over DoH and checks the ClientHello
// the fetcher sent: the Chrome hello of tlscarrier (same JA4), with
// GREASE, the resolver's name and h2 offered, not Go's own.
func TestDoHChromeHello(t *testing.T) {
	checkLeaks(t)
	port, tlsCfg := startDoH(t, makeList(t, listKey, 3, 1, time.Now().Add(time.Hour)))
	const host = "resolver.merpati.test"
	var mu sync.Mutex
	var conns []*teeConn
	f, err := bootstrap.New(bootstrap.Config{
		Domains:   []string{zone},
		ListKey:   listKey.Public().(ed25519.PublicKey),
		Keys:      [][32]byte{bootKey},
		Resolvers: []string{"https://" + net.JoinHostPort(host, port) + "/dns-query"},
		TLSConfig: tlsCfg,
		Timeout:   10 * time.Second,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var d net.Dialer
			c, err := d.DialContext(ctx, network, net.JoinHostPort("127.0.0.1", port))
			if err != nil {
				return nil, err
			}
			tc := &teeConn{Conn: c}
			mu.Lock()
			conns = append(conns, tc)
			mu.Unlock()
			return tc, nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, _, err := fetch(t, f); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(conns) == 0 {
		t.Fatal("no connection dialed")
	}
	rec, err := hello.ReadRecord(bytes.NewReader(conns[0].written()))
	if err != nil {
		t.Fatal(err)
	}
	got, err := hello.Parse(rec)
	if err != nil {
		t.Fatal(err)
	}
	want := chromeHello(t, host)
	// Each hello picks a random GREASE signature algorithm, which JA4
	// hashes: compare them with one GREASE value for all.
	gotJA4, wantJA4 := ja4.Fingerprint(sameGREASE(got), ja4.TCP), ja4.Fingerprint(sameGREASE(want), ja4.TCP)
	t.Logf("DoH hello: JA4 %s, %d-byte record, %d connection(s)", gotJA4, len(rec), len(conns))
	if gotJA4 != wantJA4 {
		t.Errorf("DoH hello JA4 %s, tlscarrier's Chrome hello %s\n got %s\nwant %s",
			gotJA4, wantJA4, ja4.Raw(sameGREASE(got), ja4.TCP), ja4.Raw(sameGREASE(want), ja4.TCP))
	}
	if got.ServerName != host || !slices.Equal(got.ALPN, []string{"h2", "http/1.1"}) {
		t.Errorf("DoH hello: SNI %q, ALPN %q", got.ServerName, got.ALPN)
	}
	grease := func(v []uint16) bool { return slices.ContainsFunc(v, hello.IsGREASE) }
	if !grease(got.CipherSuites) || !grease(got.Extensions) || !grease(got.SupportedGroups) {
		t.Errorf("DoH hello without GREASE: ciphers %v, extensions %v, groups %v", got.CipherSuites, got.Extensions, got.SupportedGroups)
	}
}

// sameGREASE returns a copy of h whose GREASE signature algorithms are
// all 0x0a0a.
func sameGREASE(h *hello.ClientHello) *hello.ClientHello {
	c := *h
	c.SignatureAlgorithms = slices.Clone(h.SignatureAlgorithms)
	for i, v := range c.SignatureAlgorithms {
		if hello.IsGREASE(v) {
			c.SignatureAlgorithms[i] = 0x0a0a
		}
	}
	return &c
}
