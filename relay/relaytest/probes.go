package relaytest

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"io"
	"net"
	"testing"
	"time"

	"github.com/merpati/merpati/transport/link"
	"github.com/merpati/merpati/transport/transporttest"
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

// CompareQUIC probes the relay at relayAddr and its cover site at
// coverAddr over QUIC ([ProbeQUIC]) and returns both views and their
// differences. A server's packetization depends on timing (Caddy
// sometimes acknowledges the client's Finished in a datagram of its own),
// and the relay passes on whatever the cover site sends, so a difference
// must show in three pairs of probes: the last pair is returned.
func CompareQUIC(t testing.TB, relayAddr, coverAddr string) (relay, cover *QUICView, diff []string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	for range 3 {
		var err error
		if relay, err = ProbeQUIC(ctx, relayAddr); err != nil {
			t.Fatalf("QUIC probe of the relay: %v", err)
		}
		if cover, err = ProbeQUIC(ctx, coverAddr); err != nil {
			t.Fatalf("QUIC probe of the cover site: %v", err)
		}
		if diff = relay.Diff(cover); len(diff) == 0 {
			return relay, cover, nil
		}
		t.Logf("QUIC probes differ, probing again: %q", diff)
	}
	return relay, cover, diff
}

// ReplayQUIC lets a client of l's key open a session to r over QUIC and
// one stream, as a user's would, while recording its datagrams, then plays
// the prober who captured them: it sends the client's first two datagrams
// (its Initials) from another address and waits for an answer. It fails
// the test unless the answer came from cov, the relay's cover site, and
// returns once it has.
func ReplayQUIC(t testing.TB, r *Relay, cov *Cover, l *link.Link) {
	t.Helper()
	fwd := transporttest.StartUDPForwarder(t, r.Addr)
	fwd.Record.Store(true)
	via := *l
	via.Relays = []string{fwd.Addr}
	s, err := Session(t, &via, link.CarrierQUIC)
	if err != nil {
		t.Fatalf("the user's session: %v", err)
	}
	// The first stream proves the connection is the relay's.
	target := Target(t, StartEcho(t))
	st, err := Open(s, target)
	if err != nil {
		t.Fatalf("the user's stream: %v", err)
	}
	st.Close()
	rec := fwd.Recorded()
	if len(rec) < 2 {
		t.Fatalf("%d datagrams recorded", len(rec))
	}
	before := cov.DatagramsQUIC()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	raddr, err := net.ResolveUDPAddr("udp", r.Addr)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range rec[:2] {
		pc.WriteTo(d, raddr)
	}
	pc.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, _, err := pc.ReadFrom(make([]byte, 2048)); err != nil {
		t.Fatalf("no answer to the replayed Initials: %v", err)
	}
	// The cover site answered the first; the second may still be on
	// its way to its reader.
	for deadline := time.Now().Add(5 * time.Second); cov.DatagramsQUIC() < before+2; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Errorf("%d of the 2 replayed Initials reached the cover site", cov.DatagramsQUIC()-before)
			break
		}
	}
}

// CheckProbes checks that a prober at r's carrier port sees r's cover
// site, cov, and nothing else; l is a link to r, whose key a prober does
// not have but whose token it may have captured.
//
// On TCP (the TLS carrier), a TLS client without a key is shown the cover
// site's certificate, and every probe of [RawProbes] gets the cover site's
// answer byte for byte. On UDP (the QUIC carrier), a prober's view of the
// relay ([ProbeQUIC]) equals its view of the cover site, and a user's
// Initials replayed from elsewhere reach the cover site ([ReplayQUIC]).
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
		_, _, diff := CompareQUIC(t, r.Addr, cov.Addr())
		for _, d := range diff {
			t.Errorf("QUIC probe: relay and cover site differ: %s", d)
		}
		ReplayQUIC(t, r, cov, l)
	default:
		t.Fatalf("relaytest: no probes for carrier %q", carrier)
	}
}
