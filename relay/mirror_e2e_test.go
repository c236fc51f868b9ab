package relay_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/merpati/merpati/relay"
	"github.com/merpati/merpati/relay/access"
	"github.com/merpati/merpati/relay/relaytest"
	"github.com/merpati/merpati/transport/auth"
	"github.com/merpati/merpati/transport/link"
	"github.com/merpati/merpati/transport/mtproxy/mtproxytest"
	"github.com/merpati/merpati/transport/tlscarrier"
)

// The relay's TLS flight for key holders against its cover site's for
// the same Chrome hello (issue 14, item 1): a censor who replays a key
// holder's hello, or who watches both, sees record sizes and their order,
// and the ServerHello in the clear.

// mirrorRuns is how many handshakes each side makes.
const mirrorRuns = 20

// TestMirrorNginx puts the relay, with an RSA-2048 key as init gives it
// for this cover site, in front of nginx (OpenSSL 3: X25519, an RSA chain
// of two, two tickets after the client's Finished).
func TestMirrorNginx(t *testing.T) {
	relaytest.CheckLeaks(t)
	testMirror(t, relaytest.StartNginx(t), "")
}

// TestMirrorGoCover puts the relay in front of a Go HTTPS server
// (crypto/tls: X25519MLKEM768, one certificate, one ticket in the first
// flight).
func TestMirrorGoCover(t *testing.T) {
	relaytest.CheckLeaks(t)
	testMirror(t, relaytest.StartCover(t), "")
}

// TestMirrorNginxOtherKey puts a relay with an ECDSA key in front of
// nginx's RSA one: its CertificateVerify cannot have the cover's size,
// and the relay must say so.
func TestMirrorNginxOtherKey(t *testing.T) {
	relaytest.CheckLeaks(t)
	testMirror(t, relaytest.StartNginx(t), "ECDSA-P256")
}

// testMirror compares mirrorRuns handshakes with cov, made as the relay
// learns its flight, with as many key holders' sessions with a relay in
// front of it: one whose key is of keyKind ("": the cover's), mirroring,
// and, for the cover's kind, one that does not mirror.
func testMirror(t *testing.T, cov relaytest.CoverSite, keyKind string) {
	var direct []*tlscarrier.Flight
	for range mirrorRuns {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		f, err := tlscarrier.LearnFlight(ctx, cov.Addr(), relaytest.CoverName)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		direct = append(direct, f)
	}
	want := direct[0]
	for i, f := range direct[1:] {
		if d := coverShape(f); d.sizes() != coverShape(want).sizes() {
			t.Fatalf("the cover site's flight changed between handshakes 1 and %d:\n%s\n%s", i+2, coverShape(want), d)
		}
	}
	t.Logf("cover site's flight: %v", want)
	late := len(want.Tickets) - want.EarlyTickets

	opts := relaytest.Options{Carriers: []string{link.CarrierTLS}, KeyKind: keyKind}
	var before []observedFlight
	if keyKind == "" {
		opts.KeyKind = want.LeafKey
		unmirrored := opts
		unmirrored.Config = func(c *relay.Config) { c.NoMirror = true }
		// Without tickets to wait for, what follows the handshake is
		// the relay's HTTP/2 preface: a second is plenty for it.
		before = relayFlights(t, relaytest.Start(t, cov, unmirrored), late, time.Second)
		// Unmirrored, the flight is crypto/tls's own, told apart from
		// the cover's; the comparison below must see that.
		if mismatches(want, before[0]) == nil {
			t.Errorf("the relay's own flight is the cover site's already: %s; the test compares nothing", before[0])
		}
	}
	r := relaytest.Start(t, cov, opts)
	gaps := r.Relay.MirrorGaps()
	t.Logf("the relay's gaps: %q", gaps)
	after := relayFlights(t, r, late, 20*time.Second)

	t.Logf("%-3s | %-70s | %-70s | %s", "run", "cover site (direct)", "relay, not mirrored", "relay, mirrored")
	for i := range mirrorRuns {
		b := "-"
		if before != nil {
			b = before[i].String()
		}
		t.Logf("%-3d | %-70s | %-70s | %s", i+1, coverShape(direct[i]), b, after[i])
	}

	// Mirrored, every session's flight has the cover's shape, but for
	// what the relay says it cannot copy.
	explained := 0
	for i, o := range after {
		for _, m := range mismatches(want, o) {
			if !slices.ContainsFunc(gaps, m.explains) {
				t.Errorf("session %d: %s: relay %v, cover site %v, and the relay's gaps (%q) do not say so", i+1, m.what, m.relay, m.cover, gaps)
			}
			explained++
		}
	}
	if keyKind != "" && explained == 0 {
		t.Errorf("a relay with an %s key matched the cover site's %s flight", keyKind, want.LeafKey)
	}
}

// coverShape is what an observer sees of a flight LearnFlight measured.
func coverShape(f *tlscarrier.Flight) observedFlight {
	return observedFlight{
		ServerHello: f.ServerHelloLen,
		Cipher:      f.CipherSuite,
		Group:       uint16(f.Group),
		Extensions:  f.Extensions,
		First:       append(slices.Clone(f.Handshake), f.Tickets[:f.EarlyTickets]...),
		Later:       f.Tickets[f.EarlyTickets:],
		Delay:       f.TicketDelay,
	}
}

// A mismatch is a way in which the relay's flight differs from the cover
// site's, and the words of which one in the relay's gaps accounts for it.
type mismatch struct {
	what         string
	relay, cover any
	words        []string
}

func (m mismatch) explains(gap string) bool {
	return slices.ContainsFunc(m.words, func(w string) bool { return strings.Contains(strings.ToLower(gap), strings.ToLower(w)) })
}

// mismatches lists how o differs from cover.
func mismatches(cover *tlscarrier.Flight, o observedFlight) []mismatch {
	c := coverShape(cover)
	var ms []mismatch
	add := func(differ bool, what string, relay, cov any, words ...string) {
		if differ {
			ms = append(ms, mismatch{what, relay, cov, words})
		}
	}
	add(o.Cipher != c.Cipher, "cipher suite", o.Cipher, c.Cipher, "cipher")
	add(o.Group != c.Group, "key share group", o.Group, c.Group, "group")
	add(o.ServerHello != c.ServerHello, "ServerHello length", o.ServerHello, c.ServerHello, "group", "ServerHello")
	add(!slices.Equal(o.Extensions, c.Extensions), "ServerHello extensions", o.Extensions, c.Extensions, "ServerHello")
	if len(o.First) != len(c.First) {
		add(true, "first flight's records", o.First, c.First, "records", "tickets in its first flight")
	} else {
		// EncryptedExtensions, Certificate, CertificateVerify and
		// Finished (of the cipher's hash), then early tickets.
		names := [][]string{{"EncryptedExtensions"}, {"certificate:"}, {"CertificateVerify"}, {"cipher"}}
		if len(cover.Handshake) != len(names) {
			names = nil
		}
		for i := range o.First {
			words := []string{"records"}
			switch {
			case i >= len(cover.Handshake):
				words = []string{"ticket"}
			case names != nil:
				words = names[i]
			}
			add(o.First[i] != c.First[i], fmt.Sprintf("first flight's record %d", i+1), o.First[i], c.First[i], words...)
		}
	}
	add(!slices.Equal(o.Later, c.Later), "records after the client's Finished", o.Later, c.Later, "ticket")
	return ms
}

// An observedFlight is what a censor sees of a server's flight: the
// ServerHello, the sizes of the encrypted records sent before the
// client's Finished (EncryptedExtensions to Finished, and early session
// tickets), and those of the first records after it (as many as the cover
// site sends tickets then), the first of them Delay after the client's
// Finished.
type observedFlight struct {
	ServerHello   int
	Cipher, Group uint16
	Extensions    []uint16
	First, Later  []int
	Delay         time.Duration
}

func (o observedFlight) String() string {
	return fmt.Sprintf("%s +%v", o.sizes(), o.Delay.Round(100*time.Microsecond))
}

// sizes is o without its delay.
func (o observedFlight) sizes() string {
	return fmt.Sprintf("SH %d %#04x/%#04x %v first %v later %v", o.ServerHello, o.Cipher, o.Group, o.Extensions, o.First, o.Later)
}

// relayFlights opens mirrorRuns sessions to r as a key holder, with the
// carrier's own dialer, and returns what each session's server flight
// looked like, with the first later records after the client's Finished,
// waiting up to wait for them.
func relayFlights(t *testing.T, r *relaytest.Relay, later int, wait time.Duration) []observedFlight {
	t.Helper()
	l := r.AddKey(t, "alice", access.Entry{})
	var out []observedFlight
	for range mirrorRuns {
		var rc *recordingConn
		d, err := tlscarrier.NewDialer(tlscarrier.ClientConfig{
			Addr: r.Addr, ServerName: l.SNI, Pin: l.Pin, Key: auth.Key(l.Key), AuthKey: l.AuthKey,
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				var d net.Dialer
				c, err := d.DialContext(ctx, network, addr)
				if err != nil {
					return nil, err
				}
				rc = &recordingConn{Conn: c}
				return rc, nil
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		s, err := d.Dial(ctx)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		// The session's reader takes in what follows the handshake.
		rc.waitLater(later, wait)
		s.Close()
		o, err := rc.observe(later)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, o)
	}
	return out
}

// A recordingConn is a key holder's connection to the relay that keeps
// the server's TLS records as they are read, and whether each came after
// the client's Finished (its second write: the first is the ClientHello).
type recordingConn struct {
	net.Conn
	mu       sync.Mutex
	buf      []byte
	recs     []seenRecord
	writes   int
	finished time.Time // when the client wrote its Finished
}

type seenRecord struct {
	typ   byte
	raw   []byte
	at    time.Time
	after bool
}

func (c *recordingConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.buf = append(c.buf, b[:n]...)
	for len(c.buf) >= 5 {
		l := 5 + int(binary.BigEndian.Uint16(c.buf[3:5]))
		if len(c.buf) < l {
			break
		}
		c.recs = append(c.recs, seenRecord{typ: c.buf[0], raw: append([]byte(nil), c.buf[:l]...), at: time.Now(), after: c.writes >= 2})
		c.buf = c.buf[l:]
	}
	return n, err
}

func (c *recordingConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	if c.writes++; c.writes == 2 {
		c.finished = time.Now()
	}
	c.mu.Unlock()
	return c.Conn.Write(b)
}

// waitLater waits until n records have come after the client's Finished,
// or for d.
func (c *recordingConn) waitLater(n int, d time.Duration) {
	for deadline := time.Now().Add(d); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		c.mu.Lock()
		got := 0
		for _, r := range c.recs {
			if r.after {
				got++
			}
		}
		c.mu.Unlock()
		if got >= n {
			return
		}
	}
}

// observe reads the recorded records: the ServerHello (parsed here, apart
// from tlscarrier's parser), the ChangeCipherSpec left out, the records
// before the client's Finished, and the first later ones after it.
func (c *recordingConn) observe(later int) (observedFlight, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var o observedFlight
	if len(c.recs) == 0 || c.recs[0].typ != 22 {
		return o, errors.New("no ServerHello")
	}
	sh := c.recs[0].raw
	o.ServerHello = len(sh)
	// record header(5), type(1) length(3) version(2) random(32),
	// session id, cipher(2), compression(1), extensions' length(2)
	p := 5 + 4 + 2 + 32
	if len(sh) < p+1 {
		return o, errors.New("short ServerHello")
	}
	p += 1 + int(sh[p])
	if len(sh) < p+5 {
		return o, errors.New("short ServerHello")
	}
	o.Cipher = binary.BigEndian.Uint16(sh[p:])
	p += 3 + 2
	for p+4 <= len(sh) {
		typ, l := binary.BigEndian.Uint16(sh[p:]), int(binary.BigEndian.Uint16(sh[p+2:]))
		if typ == 51 && p+6 <= len(sh) {
			o.Group = binary.BigEndian.Uint16(sh[p+4:])
		}
		o.Extensions = append(o.Extensions, typ)
		p += 4 + l
	}
	for _, r := range c.recs[1:] {
		switch {
		case r.typ == 20: // ChangeCipherSpec
		case !r.after:
			o.First = append(o.First, len(r.raw))
		case len(o.Later) < later:
			if len(o.Later) == 0 {
				o.Delay = r.at.Sub(c.finished)
			}
			o.Later = append(o.Later, len(r.raw))
		}
	}
	return o, nil
}

// TestMTProxyReplySize: in MTProxy mode, the FakeTLS server hello a stock
// app gets carries, where a TLS 1.3 server's encrypted flight would be,
// one ApplicationData record of the size of the cover site's (the
// payload bytes of its encrypted handshake records), in front of nginx
// and of the Go cover.
func TestMTProxyReplySize(t *testing.T) {
	for name, start := range map[string]func(testing.TB) relaytest.CoverSite{
		"nginx": func(t testing.TB) relaytest.CoverSite { return relaytest.StartNginx(t) },
		"go":    func(t testing.TB) relaytest.CoverSite { return relaytest.StartCover(t) },
	} {
		t.Run(name, func(t *testing.T) {
			cov := start(t)
			r := relaytest.Start(t, cov, relaytest.Options{})
			f, err := tlscarrier.LearnFlight(t.Context(), cov.Addr(), relaytest.CoverName)
			if err != nil {
				t.Fatal(err)
			}
			want := 0
			for _, n := range f.Handshake {
				want += n - 5
			}
			e, err := access.Add(r.Dir.KeysPath(), "app", access.Entry{})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := r.Keys.Reload(); err != nil {
				t.Fatal(err)
			}
			s, _ := r.Dir.MTProxySecret(e)
			rec := mtproxytest.HelloRecord(t, s.Host)
			if err := mtproxytest.SignClientHello(rec, s.Key, time.Now()); err != nil {
				t.Fatal(err)
			}
			c, err := net.Dial("tcp", r.Addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			if _, err := c.Write(rec); err != nil {
				t.Fatal(err)
			}
			// ServerHello, ChangeCipherSpec, then the ApplicationData record.
			var sizes []int
			for range 3 {
				hdr := make([]byte, 5)
				if _, err := io.ReadFull(c, hdr); err != nil {
					t.Fatalf("reading the server hello: %v", err)
				}
				n := int(hdr[3])<<8 | int(hdr[4])
				if _, err := io.ReadFull(c, make([]byte, n)); err != nil {
					t.Fatal(err)
				}
				sizes = append(sizes, n)
			}
			t.Logf("FakeTLS answer record payloads %v; the cover's encrypted handshake records %v", sizes, f.Handshake)
			if sizes[2] != want {
				t.Errorf("ApplicationData record of %d bytes, want the cover's %d", sizes[2], want)
			}
		})
	}
}
