package relaytest

import (
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/quic-go/quic-go/http3"

	"github.com/merpati/merpati/transport/auth"
	"github.com/merpati/merpati/transport/link"
	"github.com/merpati/merpati/transport/quiccarrier"
)

// TLSProbe makes a plain crypto/tls connection to addr, as a prober's
// browser would, and returns the leaf certificate it was shown.
func TLSProbe(t testing.TB, addr string) []byte {
	t.Helper()
	c, err := tls.Dial("tcp", addr, &tls.Config{ServerName: CoverName, InsecureSkipVerify: true, NextProtos: []string{"h2", "http/1.1"}})
	if err != nil {
		t.Fatalf("tls probe of %s: %v", addr, err)
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0].Raw
}

// RawProbe sends probe to addr over TCP, half-closes, and returns
// everything the server answers within two seconds.
func RawProbe(t testing.TB, addr string, probe []byte) []byte {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write(probe)
	c.(*net.TCPConn).CloseWrite()
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	b, _ := io.ReadAll(c)
	return b
}

// RawProbes are TCP probes whose answer does not depend on chance: a
// plain HTTP request, TLS records too short or broken to be a hello, and
// bytes that are no protocol at all. The relay must answer each exactly as
// its cover site does.
func RawProbes() [][]byte {
	junk := make([]byte, 300)
	rand.Read(junk)
	junk[0] = 0x47 // not 0x16: decided at the first byte
	broken := make([]byte, 0, 25)
	for range 5 {
		broken = append(broken, 0x16, 0x03, 0x03, 0x00, 0x10)
	}
	return [][]byte{
		[]byte("GET / HTTP/1.1\r\nHost: " + CoverName + "\r\n\r\n"),
		[]byte("\x16\x03\x01\x00\x05hello"),
		broken,
		junk,
	}
}

// H3Get fetches https://addr/ with upstream quic-go's HTTP/3 client, as a
// prober would, with the Authorization header authz if not empty, and
// returns the status code and body.
func H3Get(t testing.TB, addr, authz string) (int, string) {
	t.Helper()
	rt := &http3.Transport{TLSClientConfig: &tls.Config{ServerName: CoverName, InsecureSkipVerify: true}}
	defer rt.Close()
	ctx := t.Context()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+addr+"/", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = CoverName
	if authz != "" {
		req.Header.Set("Authorization", authz)
	}
	resp, err := rt.RoundTrip(req)
	if err != nil {
		t.Fatalf("HTTP/3 probe of %s: %v", addr, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// QUICAuthorization returns an Authorization header with a fresh token of
// l's key, as the QUIC carrier's client makes it: valid once.
func QUICAuthorization(l *link.Link) string {
	var nonce [quiccarrier.NonceSize]byte
	rand.Read(nonce[:])
	tok := auth.Token(auth.Key(l.Key), auth.Slot(time.Now()), quiccarrier.Digest(nonce[:]))
	return "Bearer " + base64.RawURLEncoding.EncodeToString(append(nonce[:], tok[:]...))
}

// CheckProbes checks that a prober at r's carrier port sees r's cover
// site, cov, and nothing else; l is a link to r, whose key a prober does
// not have but whose token it may have captured.
//
// On TCP (the TLS carrier), a TLS client without a key is shown the cover
// site's certificate, and every probe of [RawProbes] gets the cover site's
// answer byte for byte. On UDP (the QUIC carrier), an HTTP/3 GET gets the
// cover page, and so do a replayed token (whose first use was taken over,
// as a client's is) and a token of zeros; the cover site sees the relay's
// reverse proxy connect.
func CheckProbes(t *testing.T, carrier string, r *Relay, cov *Cover, l *link.Link) {
	t.Helper()
	switch carrier {
	case link.CarrierTLS:
		if got, want := TLSProbe(t, r.Addr), TLSProbe(t, cov.Addr()); !bytes.Equal(got, want) {
			t.Error("TLS probe saw a certificate other than the cover site's")
		}
		for _, probe := range RawProbes() {
			got, want := RawProbe(t, r.Addr, probe), RawProbe(t, cov.Addr(), probe)
			if !bytes.Equal(got, want) {
				t.Errorf("probe %q: relay answered %q, cover site %q", probe[:min(len(probe), 16)], got, want)
			}
		}
	case link.CarrierQUIC:
		if code, body := H3Get(t, r.Addr, ""); code != http.StatusOK || body != CoverPage {
			t.Errorf("plain HTTP/3 GET: %d %q, want the cover page", code, body)
		}
		// A token as the client makes it, used once (by "the client")
		// and then replayed by a prober that somehow learned it.
		authz := QUICAuthorization(l)
		if code, body := H3Get(t, r.Addr, authz); code != http.StatusOK || body == CoverPage {
			t.Errorf("first use of a valid token: %d %q, want a taken-over stream", code, body)
		}
		if code, body := H3Get(t, r.Addr, authz); code != http.StatusOK || body != CoverPage {
			t.Errorf("replayed token: %d %q, want the cover page", code, body)
		}
		zero := "Bearer " + base64.RawURLEncoding.EncodeToString(make([]byte, quiccarrier.NonceSize+auth.TokenSize))
		if code, body := H3Get(t, r.Addr, zero); code != http.StatusOK || body != CoverPage {
			t.Errorf("zero token: %d %q, want the cover page", code, body)
		}
		if cov.Accepted() == 0 {
			t.Error("the cover site saw no connection from the HTTP/3 reverse proxy")
		}
	default:
		t.Fatalf("relaytest: no probes for carrier %q", carrier)
	}
}
