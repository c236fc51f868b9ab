package tlscarrier

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	utls "github.com/refraction-networking/utls"
)

// mirrorCert makes a relay certificate with a key of kind keyKind.
func mirrorCert(t *testing.T, keyKind string) tls.Certificate {
	t.Helper()
	certPEM, keyPEM, err := NewCertificateLike(confServerName, keyKind)
	if err != nil {
		t.Fatal(err)
	}
	c, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestShapeCertificate re-makes relay leaves of each key kind at a range
// of cover leaf lengths, each length from 15 bytes below the relay's own
// leaf to 300 above it (where the DER length fields grow a byte, which
// padding alone cannot step over) and a few longer: each comes out exactly
// as long as the cover's, with the relay's key (the pin holds) and names,
// followed by the cover's intermediates, OCSP staple and SCTs.
func TestShapeCertificate(t *testing.T) {
	inter1, inter2 := bytes.Repeat([]byte{1}, 1267), bytes.Repeat([]byte{2}, 1380)
	for _, kind := range []string{"ECDSA-P256", "ECDSA-P384", "RSA-2048", "Ed25519"} {
		t.Run(kind, func(t *testing.T) {
			cert := mirrorCert(t, kind)
			pin, err := Pin(cert)
			if err != nil {
				t.Fatal(err)
			}
			own := len(cert.Certificate[0])
			var lengths []int
			// ECDSA signatures, and so the relay's own leaf, vary by a
			// byte or two.
			// P-384 signs slowly under the race detector: every 7th.
			step := 1
			if kind == "ECDSA-P384" {
				step = 7
			}
			for n := own - 13; n <= own+300; n += step {
				lengths = append(lengths, n)
			}
			lengths = append(lengths, 1019, 1500, 2048, 4000)
			failed, skipped := 0, 0
			for _, want := range lengths {
				f := &Flight{
					Chain: [][]byte{make([]byte, want), inter1, inter2},
					OCSP:  []byte("ocsp response"),
					SCTs:  [][]byte{[]byte("sct one"), []byte("sct two")},
				}
				got, err := shapeCertificate(cert, f)
				if err != nil && kind == "Ed25519" && skipped == 0 && strings.Contains(err.Error(), "came out") {
					// Where the signed part's DER length grows a byte,
					// one total is out of reach of a fixed-length
					// signature.
					t.Logf("cover leaf of %d bytes: %v", want, err)
					skipped++
					continue
				}
				if err != nil {
					t.Errorf("cover leaf of %d bytes: %v", want, err)
					if failed++; failed > 10 {
						t.FailNow()
					}
					continue
				}
				if n := len(got.Certificate[0]); n != want {
					t.Errorf("cover leaf of %d bytes: relay leaf of %d", want, n)
				}
				if p, err := Pin(got); err != nil || p != pin {
					t.Errorf("cover leaf of %d bytes: pin changed (%v)", want, err)
				}
				if len(got.Certificate) != 3 || !bytes.Equal(got.Certificate[1], inter1) || !bytes.Equal(got.Certificate[2], inter2) {
					t.Errorf("cover leaf of %d bytes: chain of %v bytes, want the relay's leaf and the cover's intermediates", want, chainLens(got.Certificate))
				}
				if !bytes.Equal(got.OCSPStaple, f.OCSP) || !slices.EqualFunc(got.SignedCertificateTimestamps, f.SCTs, bytes.Equal) {
					t.Errorf("cover leaf of %d bytes: OCSP staple or SCTs not the cover's", want)
				}
				if got.Leaf == nil || !bytes.Equal(got.Leaf.Raw, got.Certificate[0]) {
					t.Fatalf("cover leaf of %d bytes: Leaf is not the shaped leaf", want)
				}
				leaf := got.Leaf
				if err := leaf.VerifyHostname(confServerName); err != nil {
					t.Errorf("cover leaf of %d bytes: %v", want, err)
				}
				if err := leaf.CheckSignature(leaf.SignatureAlgorithm, leaf.RawTBSCertificate, leaf.Signature); err != nil {
					t.Errorf("cover leaf of %d bytes: the shaped leaf's signature: %v", want, err)
				}
			}
			if _, err := shapeCertificate(cert, &Flight{Chain: [][]byte{make([]byte, own-40)}}); err == nil || !strings.Contains(err.Error(), "shorter") {
				t.Errorf("a cover leaf 40 bytes shorter than the relay's: %v, want it refused as shorter", err)
			}
			if _, err := shapeCertificate(cert, &Flight{}); err == nil {
				t.Error("a cover site without a certificate was matched")
			}
		})
	}
}

// TestFillerFrame checks that a filler frame written alone makes a TLS 1.3
// record of the size asked for, and is an HTTP/2 frame that receivers
// ignore: an unknown type, on stream 0, of the length its header says.
func TestFillerFrame(t *testing.T) {
	for _, n := range []int{31, 32, 58, 100, 287, 1000, 5 + 1 + 16 + 9 + 1<<14} {
		f, ok := fillerFrame(n)
		if !ok {
			t.Errorf("fillerFrame(%d) refused", n)
			continue
		}
		if rec := 5 + len(f) + 1 + 16; rec != n {
			t.Errorf("fillerFrame(%d): a record of %d bytes", n, rec)
		}
		length := int(f[0])<<16 | int(f[1])<<8 | int(f[2])
		if length != len(f)-9 || f[3] != frameTypeFiller || f[4] != 0 || binary.BigEndian.Uint32(f[5:9]) != 0 {
			t.Errorf("fillerFrame(%d): header % x", n, f[:9])
		}
	}
	for _, n := range []int{0, 30, 5 + 1 + 16 + 9 + 1<<14 + 1} {
		if _, ok := fillerFrame(n); ok {
			t.Errorf("fillerFrame(%d) made a frame", n)
		}
	}
}

// TestLearnFlightGo learns the flight of a Go HTTPS server: crypto/tls's,
// which sends one session ticket in its first flight.
func TestLearnFlightGo(t *testing.T) {
	srv := httptest.NewUnstartedServer(http.NotFoundHandler())
	srv.EnableHTTP2 = true
	srv.StartTLS()
	defer srv.Close()
	for i := range 20 {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		f, err := LearnFlight(ctx, srv.Listener.Addr().String(), confServerName)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			t.Logf("Go's flight: %v", f)
		}
		leaf := srv.Certificate()
		if f.Version != tls.VersionTLS13 || f.CipherSuite != tls.TLS_AES_128_GCM_SHA256 || f.Group != utls.X25519MLKEM768 || f.ALPN != "h2" {
			t.Fatalf("flight %v; want TLS 1.3, AES-128-GCM, X25519MLKEM768, h2", f)
		}
		if !slices.Equal(f.Extensions, []uint16{43, 51}) {
			t.Errorf("ServerHello extensions %v, want [43 51]", f.Extensions)
		}
		// type, length, version, random, session id (Chrome's 32 bytes),
		// cipher, compression, extensions: supported_versions and an
		// X25519MLKEM768 share (1088 + 32 bytes).
		if want := 5 + 4 + 2 + 32 + 1 + 32 + 2 + 1 + 2 + 6 + 4 + 2 + 2 + 1120; f.ServerHelloLen != want {
			t.Errorf("ServerHello %d bytes, want %d", f.ServerHelloLen, want)
		}
		if len(f.Chain) != 1 || !bytes.Equal(f.Chain[0], leaf.Raw) || f.LeafKey != keyName(leaf) {
			t.Errorf("chain %v, leaf %s; want the server's", chainLens(f.Chain), f.LeafKey)
		}
		if len(f.Handshake) != 4 || f.Handshake[3] != 58 {
			t.Errorf("handshake records %v, want EncryptedExtensions, Certificate, CertificateVerify, Finished (58 bytes)", f.Handshake)
		}
		if len(f.Tickets) != 1 || f.EarlyTickets != 1 {
			t.Fatalf("run %d: tickets %v, %d early; want one, in the first flight", i, f.Tickets, f.EarlyTickets)
		}
	}
}

// rec makes a synthetic server record of typ, n bytes long, received
// after the client's Finished or not.
func rec(typ byte, n int, after bool, at time.Duration) flightRecord {
	b := make([]byte, n)
	b[0] = typ
	return flightRecord{typ: typ, raw: b, afterFinished: after, at: time.Unix(0, 0).Add(at), clientFinished: time.Unix(0, 0)}
}

// serverHello makes a ServerHello record choosing cipher and a key share
// of group, with extensions in the order exts gives (43 and 51 filled in,
// others empty).
func serverHello(cipher uint16, group uint16, exts ...uint16) []byte {
	var e []byte
	for _, x := range exts {
		switch x {
		case 43:
			e = append(e, 0, 43, 0, 2, 3, 4)
		case 51:
			e = binary.BigEndian.AppendUint16(e, 51)
			e = append(e, 0, 36)
			e = binary.BigEndian.AppendUint16(e, group)
			e = append(e, 0, 32)
			e = append(e, make([]byte, 32)...)
		default:
			e = binary.BigEndian.AppendUint16(e, x)
			e = append(e, 0, 0)
		}
	}
	body := []byte{3, 3}
	body = append(body, make([]byte, 32)...)
	body = append(body, 32)
	body = append(body, make([]byte, 32)...)
	body = binary.BigEndian.AppendUint16(body, cipher)
	body = append(body, 0)
	body = binary.BigEndian.AppendUint16(body, uint16(len(e)))
	body = append(body, e...)
	msg := append([]byte{2, 0, byte(len(body) >> 8), byte(len(body))}, body...)
	return append([]byte{22, 3, 3, byte(len(msg) >> 8), byte(len(msg))}, msg...)
}

// TestFlightReadRecords reads flights from synthetic record lists: tickets
// in the first flight or after the client's Finished, records merged, the
// records after the tickets left out.
func TestFlightReadRecords(t *testing.T) {
	sh := serverHello(0x1301, 0x001d, 43, 51)
	shRec := flightRecord{typ: 22, raw: sh}
	ccs := rec(recordChangeCipherSpec, 6, false, 0)
	const app = 23
	for _, tc := range []struct {
		name      string
		recs      []flightRecord
		tickets   int
		hs, tk    []int
		early     int
		delay     time.Duration
		cipher    uint16
		exts      []uint16
		shBody    []byte
		wantError bool
	}{
		{
			name:    "OpenSSL: two tickets after the client's Finished",
			recs:    []flightRecord{shRec, ccs, rec(app, 41, false, 0), rec(app, 2326, false, 0), rec(app, 286, false, 0), rec(app, 58, false, 0), rec(app, 287, true, 2*time.Millisecond), rec(app, 287, true, 3*time.Millisecond), rec(app, 40, true, 4*time.Millisecond)},
			tickets: 2, hs: []int{41, 2326, 286, 58}, tk: []int{287, 287}, delay: 2 * time.Millisecond,
		},
		{
			name:    "Go: one ticket in the first flight",
			recs:    []flightRecord{shRec, ccs, rec(app, 37, false, 0), rec(app, 800, false, 0), rec(app, 100, false, 0), rec(app, 58, false, 0), rec(app, 200, false, 0), rec(app, 40, true, time.Millisecond)},
			tickets: 1, hs: []int{37, 800, 100, 58}, tk: []int{200}, early: 1,
		},
		{
			name:    "Go's early ticket read after the client's Finished",
			recs:    []flightRecord{shRec, ccs, rec(app, 37, false, 0), rec(app, 800, false, 0), rec(app, 100, false, 0), rec(app, 58, false, 0), rec(app, 200, true, time.Millisecond)},
			tickets: 1, hs: []int{37, 800, 100, 58}, tk: []int{200}, delay: time.Millisecond,
		},
		{
			name:    "merged: the whole encrypted flight in one record, no ticket",
			recs:    []flightRecord{shRec, rec(app, 3000, false, 0), rec(app, 50, true, time.Millisecond)},
			tickets: 0, hs: []int{3000},
		},
		{
			name:    "one early and one late ticket, no ChangeCipherSpec",
			recs:    []flightRecord{shRec, rec(app, 41, false, 0), rec(app, 2000, false, 0), rec(app, 58, false, 0), rec(app, 250, false, 0), rec(app, 251, true, 5*time.Millisecond)},
			tickets: 2, hs: []int{41, 2000, 58}, tk: []int{250, 251}, early: 1, delay: 5 * time.Millisecond,
		},
		{
			name:   "AES-256: a longer Finished",
			recs:   []flightRecord{{typ: 22, raw: serverHello(0x1302, 0x001d, 51, 43)}, rec(app, 41, false, 0), rec(app, 74, false, 0), rec(app, 300, true, time.Millisecond)},
			cipher: 0x1302, exts: []uint16{51, 43}, tickets: 1, hs: []int{41, 74}, tk: []int{300}, delay: time.Millisecond,
		},
		{name: "no records", wantError: true},
		{name: "no ServerHello first", recs: []flightRecord{rec(app, 41, false, 0)}, wantError: true},
		{name: "not a ServerHello", recs: []flightRecord{{typ: 22, raw: []byte{22, 3, 3, 0, 4, 1, 0, 0, 0}}}, wantError: true},
		{name: "extensions overrun", recs: []flightRecord{{typ: 22, raw: sh[:len(sh)-3]}}, wantError: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var f Flight
			err := f.readRecords(tc.recs, tc.tickets)
			if tc.wantError {
				if err == nil {
					t.Fatalf("no error; flight %v", &f)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			cipher, exts := uint16(0x1301), []uint16{43, 51}
			if tc.cipher != 0 {
				cipher, exts = tc.cipher, tc.exts
			}
			if f.ServerHelloLen != len(tc.recs[0].raw) || f.CipherSuite != cipher || f.Group != utls.X25519 || !slices.Equal(f.Extensions, exts) {
				t.Errorf("ServerHello %d bytes, cipher %#04x, group %v, extensions %v", f.ServerHelloLen, f.CipherSuite, f.Group, f.Extensions)
			}
			if !slices.Equal(f.Handshake, tc.hs) || !slices.Equal(f.Tickets, tc.tk) || f.EarlyTickets != tc.early || f.TicketDelay != tc.delay {
				t.Errorf("handshake %v, tickets %v (%d early, %v later); want %v, %v (%d early, %v later)",
					f.Handshake, f.Tickets, f.EarlyTickets, f.TicketDelay, tc.hs, tc.tk, tc.early, tc.delay)
			}
		})
	}
}

// TestFlightGaps checks what the relay reports it cannot mirror.
func TestFlightGaps(t *testing.T) {
	base := Flight{Version: tls.VersionTLS13, CipherSuite: tls.TLS_AES_128_GCM_SHA256, Handshake: []int{41, 2326, 286, 58}}
	if g := base.Gaps(); len(g) != 0 {
		t.Errorf("gaps of a flight like crypto/tls's: %v", g)
	}
	for _, tc := range []struct {
		change func(*Flight)
		want   string
	}{
		{func(f *Flight) { f.Version = tls.VersionTLS12 }, "TLS 0x0303"},
		{func(f *Flight) { f.CipherSuite = tls.TLS_AES_256_GCM_SHA384 }, "cipher 0x1302"},
		{func(f *Flight) { f.Tickets, f.EarlyTickets = []int{200, 200}, 2 }, "2 tickets in its first flight"},
		{func(f *Flight) { f.Handshake = []int{2700} }, "in 1 records [2700], crypto/tls in 4"},
	} {
		f := base
		tc.change(&f)
		if g := strings.Join(f.Gaps(), "; "); !strings.Contains(g, tc.want) {
			t.Errorf("gaps %q, want one naming %q", g, tc.want)
		}
	}
}

// TestMirrorRetry: a cover site down when the relay starts is learned
// once it answers, long before the next Interval, and until then Gaps
// says the flight is not learned.
func TestMirrorRetry(t *testing.T) {
	srv := httptest.NewUnstartedServer(http.NotFoundHandler())
	srv.EnableHTTP2 = true
	srv.StartTLS()
	defer srv.Close()
	// A front that closes every connection until up, then splices them
	// to the Go HTTPS server.
	front, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer front.Close()
	var up atomic.Bool
	var tries atomic.Int64
	go func() {
		for {
			c, err := front.Accept()
			if err != nil {
				return
			}
			tries.Add(1)
			if !up.Load() {
				c.Close()
				continue
			}
			go func() {
				defer c.Close()
				s, err := net.Dial("tcp", srv.Listener.Addr().String())
				if err != nil {
					return
				}
				defer s.Close()
				go func() { io.Copy(s, c); s.(*net.TCPConn).CloseWrite() }()
				io.Copy(c, s)
			}()
		}
	}()
	m, err := NewMirror(MirrorConfig{Cover: front.Addr().String(), ServerName: confServerName,
		Certificate: mirrorCert(t, "ECDSA-P256"), Interval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	m.retryMin = 20 * time.Millisecond
	if _, err := m.Learn(context.Background()); err == nil {
		t.Fatal("learned the flight of a cover site that is down")
	}
	if g := m.Gaps(); len(g) != 1 || !strings.Contains(g[0], "not learned") {
		t.Errorf("gaps before the flight was learned: %q", g)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		m.Run(ctx)
	}()
	defer func() {
		cancel()
		<-done
	}()
	// Let a few retries fail, then bring the cover site up.
	for deadline := time.Now().Add(10 * time.Second); tries.Load() < 3; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d tries in 10 s with the cover site down, want a retry every 20 ms doubling", tries.Load())
		}
	}
	up.Store(true)
	deadline := time.Now().Add(30 * time.Second)
	for m.Flight() == nil {
		if time.Now().After(deadline) {
			t.Fatalf("flight not learned 30 s after the cover site came up (%d tries)", tries.Load())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if g := strings.Join(m.Gaps(), "; "); strings.Contains(g, "not learned") {
		t.Errorf("gaps once learned: %q", g)
	}
	t.Logf("learned after %d tries: %v", tries.Load(), m.Flight())
}

// TestMTProxyGaps: the relay names how MTProxy mode's answer differs from
// the cover site's flight.
func TestMTProxyGaps(t *testing.T) {
	f := &Flight{Handshake: []int{41, 2326, 286, 58}, Tickets: []int{266, 266}}
	g := strings.Join(mtproxyGaps(f), "; ")
	for _, want := range []string{"one ApplicationData record where the cover site sends 4", "no session tickets where the cover site sends 2"} {
		if !strings.Contains(g, want) {
			t.Errorf("MTProxy gaps %q, want one naming %q", g, want)
		}
	}
	if g := mtproxyGaps(&Flight{Handshake: []int{2700}}); len(g) != 0 {
		t.Errorf("MTProxy gaps of a cover that sends one record and no ticket: %q", g)
	}
}
