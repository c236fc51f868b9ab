//go:build unix

package quiccarrier

import (
	"bytes"
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"encoding/binary"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	upquic "github.com/quic-go/quic-go"
	uphttp3 "github.com/quic-go/quic-go/http3"
	"golang.org/x/net/http2/hpack"

	"github.com/merpati/merpati/transport/auth"
	"github.com/merpati/merpati/transport/tlscarrier"
)

// TestChromiumQUICInitialLayout captures, over IPv4 and over IPv6
// loopback, the QUIC handshake of Debian's /usr/bin/chromium and then of
// our Dialer with an HTTP/3 server, has tshark dissect the capture (it
// decrypts the Initials from their public keys and the rest with the
// server's key log) and checks, in what an on-path observer sees without
// keys, that ours has what Chromium's, captured in the same run, has:
//
//   - the ACK frames in the client's Initial packets and in the packet
//     with its Finished have a non-zero ACK Delay (ours: in all its
//     Initial and Handshake packets);
//   - the client's Finished shares its datagram with a 1-RTT packet;
//   - the datagrams with the ClientHello have the same sizes, and every
//     datagram with an Initial packet is padded to that size (1250 bytes
//     over IPv4, 1230 over IPv6);
//   - the client keeps the server's connection ID in all its packets;
//   - with the server's flight held, the client sends as many datagrams
//     with Initial packets as Chromium, give or take initialCountMargin,
//     and only kinds of them (see initialKind) that Chromium sends too:
//     no Initial probes while the flight is late (checkInitialDatagrams);
//
// and, as Chromium loads a page, our client makes one request, which the
// test server answers with its page, and is given time for path MTU
// probes; in what tshark decrypts with the key log (checkH3Layout):
//
//   - the datagram with the Finished has the size of Chromium's, give or
//     take finishedMargin, once what varies at random between connections
//     is taken out (see the margins);
//   - the SETTINGS frame has Chromium's identifiers and values in
//     Chromium's order (GREASE ones as such), and a GREASE frame follows;
//   - the first request goes in a datagram after the Finished, with a
//     PRIORITY_UPDATE frame for it before its HEADERS, and has the size
//     of Chromium's first request datagram, give or take requestMargin;
//   - no datagram is larger than Chromium's largest (no path MTU probes).
//
// Each family runs twice: with the server's flight sent at once, after
// which Chromium usually sends its Finished without acknowledging the
// server's Initial, and with the server's Handshake datagrams held back
// for a moment, which makes both clients acknowledge the Initial first.
//
// Without /usr/bin/chromium or tshark the test is skipped, unless the
// environment variable CI is set, in which case it fails.
func TestChromiumQUICInitialLayout(t *testing.T) {
	chromium := needTool(t, "/usr/bin/chromium")
	tshark := needTool(t, "tshark")
	for _, family := range []struct{ name, host string }{{"IPv4", "127.0.0.1"}, {"IPv6", "::1"}} {
		for _, mode := range []struct {
			name string
			hold time.Duration
		}{{"flight", 0}, {"held", 20 * time.Millisecond}} {
			t.Run(family.name+"/"+mode.name, func(t *testing.T) {
				chrome, ours := captureHandshakes(t, chromium, tshark, family.host, mode.hold)
				for try := 1; mode.hold > 0 && try < 5 && serverMissedPTO(ours); try++ {
					// Nothing from the server before our client's first
					// probe time-out: the server (on a machine busy with
					// the race detector) was slower than the hold, and
					// probing with Initials is then right, for Chromium
					// too. That is not the case under test: again.
					t.Logf("try %d: %s: probed before the server's first datagram came; capturing again", try, ours)
					chrome, ours = captureHandshakes(t, chromium, tshark, family.host, mode.hold)
				}
				for _, c := range chrome {
					t.Logf("%s", c)
				}
				t.Logf("%s", ours)
				checkInitialLayout(t, chrome, ours, mode.hold > 0)
				if mode.hold > 0 {
					checkInitialDatagrams(t, chrome, ours)
				}
				checkH3Layout(t, chrome, ours)
			})
		}
	}
}

// checkInitialLayout checks ours against Chromium's connections; with
// initialAck, our client must have acknowledged the server's Initial (as
// Chromium then does too, unless it took long to write).
func checkInitialLayout(t *testing.T, chrome []*clientTrace, ours *clientTrace, initialAck bool) {
	t.Helper()
	if len(chrome) == 0 {
		t.Fatal("no QUIC connection from chromium in the capture")
	}
	var chromeInitialSizes []int
	for _, c := range chrome {
		chromeInitialSizes = append(chromeInitialSizes, c.sizes(isInitial)...)
	}
	for _, c := range append(slices.Clone(chrome), ours) {
		if len(c.ackDelays["Initial"])+len(c.ackDelays["Handshake"]) == 0 {
			t.Errorf("%s: no ACK in its Initial or Handshake packets", c.who)
		}
		if initialAck && len(c.ackDelays["Initial"]) == 0 {
			// Whether the ACK of the server's Initial goes out before the
			// late flight arrives depends on the timing of both sides (on
			// a machine busy with the race detector, ours often does
			// not): noted, not required.
			t.Logf("%s: no ACK in its Initial packets although the server's Handshake flight came late", c.who)
		}
		// Chromium's ACK Delay is never 0 in Initial packets and in the
		// packet with its Finished; in an ACK-only Handshake packet sent
		// at once it can be. Ours is the time since the packet arrived.
		zero := slices.Contains(c.ackDelays["Initial"], 0) || slices.Contains(c.finishedAckDelays, 0)
		if c == ours {
			zero = zero || slices.Contains(c.ackDelays["Handshake"], 0)
		}
		if zero {
			t.Errorf("%s: an ACK in an Initial or Handshake packet has ACK Delay 0", c.who)
		}
		if c.finished < 0 {
			t.Errorf("%s: no datagram with its Finished in the capture", c.who)
		} else if d := c.datagrams[c.finished]; !slices.Contains(d.packets, "1-RTT") {
			t.Errorf("%s: its Finished goes in a datagram without a 1-RTT packet: %s", c.who, &d)
		}
		if len(c.dcids) == 0 || slices.ContainsFunc(c.dcids, func(id string) bool { return id != c.serverCID }) {
			t.Errorf("%s: sends to connection IDs %v, not only to the server's %s", c.who, c.dcids, c.serverCID)
		}
		for _, n := range c.sizes(isInitial) {
			if !slices.Contains(chromeInitialSizes, n) {
				t.Errorf("%s: a datagram with an Initial packet has %d bytes, chromium's %v", c.who, n, chromeInitialSizes)
			}
		}
	}
	if got, want := ours.sizes(isHello), chrome[0].sizes(isHello); !slices.Equal(got, want) {
		t.Errorf("our ClientHello datagrams are %v bytes, chromium's %v", got, want)
	}
}

// initialCountMargin is how many more or fewer datagrams with Initial
// packets than Chromium our client may send while the server's flight is
// late (checkInitialDatagrams). Chromium sends its two with the
// ClientHello and, unless it writes only once the flight is in, one with
// an ACK (now and then a second, with a Handshake packet): over 78
// connections, IPv4 and IPv6, flight held 20 or 100 ms, 3 in 75, 2 in 2
// and 4 in 1; ours 3 in all 66. Before the check ours sent a padded
// Initial PING at every PTO (a few ms on loopback) until the flight came:
// 6 to 9 datagrams with it held 20 ms, 10 to 14 with it held 100 ms.
// (With the flight at once, not checked, Chromium's count was 2 to 4:
// whether it acknowledges the server's Initial first, and in a datagram
// of its own, depends on its timing.)
const initialCountMargin = 1

// checkInitialDatagrams checks, for a capture with the server's flight
// held, that our client sends as many datagrams with Initial packets as
// Chromium, give or take initialCountMargin, and none of a kind that none
// of Chromium's connections sends, but for an ACK-only one, which
// Chromium sends too unless it writes only once the late flight is in
// (in 2 of the 78 connections above).
func checkInitialDatagrams(t *testing.T, chrome []*clientTrace, ours *clientTrace) {
	t.Helper()
	var counts []int
	chromeKinds := map[string]bool{"ACK": true}
	for _, c := range chrome {
		kinds := c.initialKinds()
		counts = append(counts, len(kinds))
		for _, k := range kinds {
			chromeKinds[k] = true
		}
	}
	kinds := ours.initialKinds()
	t.Logf("datagrams with Initial packets: ours %v, chromium's %d", kinds, counts)
	if len(counts) == 0 {
		t.Fatal("no QUIC connection from chromium in the capture")
	}
	if lo, hi := slices.Min(counts)-initialCountMargin, slices.Max(counts)+initialCountMargin; len(kinds) < lo || len(kinds) > hi {
		t.Errorf("ours: %d datagrams with Initial packets, chromium's %v ± %d", len(kinds), counts, initialCountMargin)
	}
	seen := map[string]bool{}
	for _, k := range kinds {
		if !chromeKinds[k] && !seen[k] {
			seen[k] = true
			t.Errorf("ours: a datagram with Initial packets of %s, a kind chromium does not send (%v)", k, slices.Sorted(maps.Keys(chromeKinds)))
		}
	}
}

// serverMissedPTO reports whether c probed with Initial packets before
// it had anything from the server: a datagram of CRYPTO and PING (a probe
// without an ACK) before any Initial packet of c acknowledged the
// server's. A probe after such an ACK is a client probing with Initials
// once it holds the server's flight, which the test is for.
func serverMissedPTO(c *clientTrace) bool {
	for _, k := range c.initialKinds() {
		switch {
		case k == "CRYPTO+PING":
			return true
		case strings.Contains(k, "ACK"):
			return false
		}
	}
	return false
}

// Margins of checkH3Layout, in bytes. Taken out of the sizes compared is
// what varies at random between two connections of the same client: the
// GREASE setting and frame (a value of 4 or 8 bytes, a payload of 0 to 3),
// the ACK frames (5 to 12 bytes each, acknowledging what arrived when,
// with or without gaps) and any Initial packet coalesced in front
// (Chromium sends one now and then); and from Chromium's request what the
// test adds to it (requestArtefact). What is left can differ by the packet
// numbers, of 1 or 2 bytes each. Over 48 connections of each, IPv4 and
// IPv6, flight at once and held: what is left was 111 bytes in every
// datagram with the Finished and 452 in every first request datagram, of
// both clients; raw, Chromium's were 138-150 and 462-468 bytes, ours
// 144-156 and 452-457 (before the checks: 111-120 bytes with the request
// elsewhere, or 523-529 with it; 430 bytes).
const (
	finishedMargin = 2
	requestMargin  = 1
)

// h3Facts is what checkH3Layout compares of one client's connection.
type h3Facts struct {
	// finished is the size of the datagram with the Finished less its
	// Initial packets, ACK frames and GREASE (see greaseBytes), -1 if
	// none; request that of the datagram with the first HEADERS frame
	// less its ACK frames (and, for Chromium, requestArtefact), -1 if
	// none, or if that is the Finished one; largest that of the
	// client's largest datagram. finishedRaw and requestRaw are the
	// datagrams' sizes.
	finished, request, largest int
	finishedRaw, requestRaw    int
	// settings are the first SETTINGS frame's, GREASE ones as "GREASE";
	// grease says a frame of a reserved type came after it; priority is
	// the field value of the PRIORITY_UPDATE for stream 0 before the
	// first HEADERS in its datagram, "" if none.
	settings []string
	grease   bool
	priority string
}

func h3FactsOf(c *clientTrace) h3Facts {
	f := h3Facts{finished: -1, request: -1, finishedRaw: -1, requestRaw: -1}
	if c.finished >= 0 {
		d := &c.datagrams[c.finished]
		f.finishedRaw = d.size - d.initialBytes
		f.finished = f.finishedRaw - d.ackBytes - d.greaseBytes()
	}
	seenSettings, seenHeaders := false, false
	for i := range c.datagrams {
		d := &c.datagrams[i]
		f.largest = max(f.largest, d.size)
		var update *h3Frame
		for j := range d.h3 {
			fr := &d.h3[j]
			switch {
			case fr.typ == h3Settings && !seenSettings:
				seenSettings = true
				for _, kv := range fr.settings {
					if isH3Grease(kv[0]) {
						f.settings = append(f.settings, "GREASE")
					} else {
						f.settings = append(f.settings, fmt.Sprintf("%#x=%d", kv[0], kv[1]))
					}
				}
			case isH3Grease(fr.typ) && seenSettings:
				f.grease = true
			case fr.typ == h3PriorityUpdate && !seenHeaders:
				update = fr
			case fr.typ == h3Headers && !seenHeaders:
				seenHeaders = true
				if i != c.finished {
					f.requestRaw = d.size
					f.request = d.size - d.ackBytes - c.requestArtefact
				}
				// Our client's and Chromium's first request stream is 0.
				if update != nil && update.element == 0 {
					f.priority = update.fieldValue
				}
			}
		}
	}
	return f
}

// checkH3Layout checks the datagram with our Finished, our HTTP/3 control
// stream and our first request against Chromium's.
func checkH3Layout(t *testing.T, chrome []*clientTrace, ours *clientTrace) {
	t.Helper()
	o := h3FactsOf(ours)
	t.Logf("ours: %+v", o)
	var finished, request []int
	largest := 0
	for _, c := range chrome {
		f := h3FactsOf(c)
		t.Logf("%s: %+v", c.who, f)
		if f.finished >= 0 {
			finished = append(finished, f.finished)
		}
		if f.request >= 0 {
			request = append(request, f.request)
		}
		largest = max(largest, f.largest)
		if !slices.Equal(o.settings, f.settings) {
			t.Errorf("our SETTINGS %v, %s's %v", o.settings, c.who, f.settings)
		}
		if o.priority != f.priority {
			t.Errorf("our PRIORITY_UPDATE with the first request %q, %s's %q", o.priority, c.who, f.priority)
		}
	}
	if !o.grease {
		t.Errorf("ours: no GREASE frame after SETTINGS on the control stream")
	}
	if o.priority == "" {
		t.Errorf("ours: no PRIORITY_UPDATE before the first request's HEADERS in its datagram")
	}
	within := func(what string, got int, ref []int, margin int) {
		t.Helper()
		if len(ref) == 0 {
			t.Errorf("no chromium %s to compare ours with", what)
			return
		}
		if lo, hi := slices.Min(ref)-margin, slices.Max(ref)+margin; got < lo || got > hi {
			t.Errorf("our %s: %d bytes (compared), chromium's %v ± %d", what, got, ref, margin)
		}
	}
	within("datagram with the Finished", o.finished, finished, finishedMargin)
	if o.request < 0 {
		t.Errorf("ours: the first request's HEADERS are not in a datagram of their own after the Finished")
	} else {
		within("first request datagram", o.request, request, requestMargin)
	}
	if o.largest > largest {
		t.Errorf("ours: a datagram of %d bytes, chromium's largest %d", o.largest, largest)
	}
}

// needTool returns the path of the program name, or skips t without it
// (fails it if the environment variable CI is set).
func needTool(t *testing.T, name string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s is required in CI: %v", name, err)
		}
		t.Skipf("%s not installed: %v", name, err)
	}
	return path
}

// clientTrace is what tshark showed of one client's side of a QUIC
// handshake.
type clientTrace struct {
	who       string
	datagrams []udpDatagram
	// ackDelays lists, per packet type ("Initial", "Handshake"), the ACK
	// Delay fields of the ACK frames in it, in order, as sent (in units
	// of 8 µs: Chromium and ours use the default exponent 3).
	ackDelays map[string][]uint64
	// finished is the index in datagrams of the one with the client's
	// Finished, or -1; finishedAckDelays lists the ACK Delay of the ACK in
	// the packet with the Finished, if it has one.
	finished          int
	finishedAckDelays []uint64
	// dcids lists the destination connection IDs of the client's packets
	// other than Initial ones; serverCID is the source connection ID of
	// the server's first packet to the client.
	dcids     []string
	serverCID string
	// helloBytes marks the offsets of the CRYPTO data seen in the client's
	// Initial packets.
	helloBytes map[uint64]bool
	// requestArtefact is what Chromium's request headers have only
	// because of the test (see captureHandshakes), in bytes: 10 or so.
	requestArtefact int
}

// udpDatagram is one UDP datagram from the client: its payload size, the
// QUIC packets in it ("Initial", "Handshake", "0-RTT", "1-RTT"), and
// whether it carries bytes of the ClientHello not sent before (a
// retransmission does not).
type udpDatagram struct {
	size    int
	packets []string
	hello   bool
	// initialBytes is the size of the Initial packets in it; h3 lists
	// the HTTP/3 frames tshark found in its 1-RTT packets, in order.
	initialBytes int
	h3           []h3Frame
	// ackBytes is the size of the ACK frames in its other packets.
	ackBytes int
	// initialFrames lists the frame types (tshark's names, "ACK",
	// "CRYPTO", "PING", "PADDING"...) in its Initial packets, in order.
	initialFrames []string
}

// greaseBytes is the size of the GREASE settings and frames in d, whose
// varints and payload have random lengths (a setting's value 4 or 8 bytes,
// a frame's payload 0 to 3), both encoded in the fewest bytes.
func (d *udpDatagram) greaseBytes() int {
	n := 0
	for _, f := range d.h3 {
		for _, kv := range f.settings {
			if isH3Grease(kv[0]) {
				n += varintLen(kv[0]) + varintLen(kv[1])
			}
		}
		if isH3Grease(f.typ) {
			n += varintLen(f.typ) + varintLen(f.length) + int(f.length)
		}
	}
	return n
}

// varintLen is the size of the shortest QUIC varint for v (RFC 9000
// section 16).
func varintLen(v uint64) int {
	switch {
	case v < 1<<6:
		return 1
	case v < 1<<14:
		return 2
	case v < 1<<30:
		return 4
	}
	return 8
}

// h3Frame is an HTTP/3 frame, with the identifier and value of each
// setting in a SETTINGS frame and the element ID and field value of a
// PRIORITY_UPDATE one.
type h3Frame struct {
	typ, length uint64
	settings    [][2]uint64
	element     uint64
	fieldValue  string
}

// HTTP/3 frame types (RFC 9114 section 7.2, RFC 9218 section 7.1).
const (
	h3Headers        = 0x1
	h3Settings       = 0x4
	h3PriorityUpdate = 0xf0700
)

// isH3Grease reports whether id is a reserved setting identifier or frame
// type, 0x1f*N + 0x21 (RFC 9114 sections 7.2.4.1 and 7.2.8).
func isH3Grease(id uint64) bool { return id >= 0x21 && (id-0x21)%0x1f == 0 }

func (d *udpDatagram) String() string {
	return fmt.Sprintf("%d:%s", d.size, strings.Join(d.packets, "+"))
}

// initialKind names what the Initial packets in d carry: "ClientHello"
// when they carry bytes of it not sent before, otherwise their frame types
// other than PADDING, sorted and joined by "+" (a CRYPTO frame there
// repeats ClientHello bytes), "" when d has no Initial packet.
func initialKind(d *udpDatagram) string {
	switch {
	case !isInitial(d):
		return ""
	case d.hello:
		return "ClientHello"
	}
	var frames []string
	for _, f := range d.initialFrames {
		if f != "PADDING" && !slices.Contains(frames, f) {
			frames = append(frames, f)
		}
	}
	slices.Sort(frames)
	return strings.Join(frames, "+")
}

// initialKinds lists initialKind of each of c's datagrams with an Initial
// packet, in order.
func (c *clientTrace) initialKinds() []string {
	var kinds []string
	for i := range c.datagrams {
		if k := initialKind(&c.datagrams[i]); k != "" {
			kinds = append(kinds, k)
		}
	}
	return kinds
}

func isInitial(d *udpDatagram) bool { return slices.Contains(d.packets, "Initial") }
func isHello(d *udpDatagram) bool   { return d.hello }

// sizes lists the sizes of the datagrams for which keep is true.
func (c *clientTrace) sizes(keep func(*udpDatagram) bool) []int {
	var s []int
	for i := range c.datagrams {
		if keep(&c.datagrams[i]) {
			s = append(s, c.datagrams[i].size)
		}
	}
	return s
}

func (c *clientTrace) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: ACK delays Initial %v Handshake %v; datagrams", c.who, c.ackDelays["Initial"], c.ackDelays["Handshake"])
	for i := range c.datagrams {
		b.WriteString(" ")
		if i == c.finished {
			b.WriteString("[Finished]")
		}
		b.WriteString(c.datagrams[i].String())
	}
	return b.String()
}

// captureHandshakes serves HTTP/3 on host (a loopback address), lets
// chromium load a page from it and then our Dialer connect, records every
// datagram the server receives and sends, and returns tshark's view of
// each client: chromium's connections in order, then ours. A hold above
// zero delays the server's first datagram to each client that starts with
// a Handshake packet by that much.
func captureHandshakes(t *testing.T, chromium, tshark, host string, hold time.Duration) (chrome []*clientTrace, ours *clientTrace) {
	ctx, cancel := context.WithTimeout(t.Context(), 45*time.Second)
	defer cancel()
	pc, err := net.ListenPacket("udp", net.JoinHostPort(host, "0"))
	if err != nil {
		if host == "::1" && os.Getenv("CI") == "" {
			t.Skipf("no IPv6 loopback: %v", err)
		}
		t.Fatal(err)
	}
	cert := testCertFor(t, fpServerName)
	pin, err := tlscarrier.Pin(cert)
	if err != nil {
		t.Fatal(err)
	}
	var keylog lockedBuffer
	tlsConf := serverTLS(cert)
	tlsConf.KeyLogWriter = &keylog
	srv := &uphttp3.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			// Our client's request gets the page too, which it takes
			// for a refusal.
			io.WriteString(w, "<!doctype html><title>merpati</title><p>ok</p>")
		}),
		TLSConfig:  uphttp3.ConfigureTLSConfig(tlsConf),
		QUICConfig: &upquic.Config{},
	}
	rec := &pcapConn{PacketConn: pc, hold: hold}
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(rec)
	}()
	defer func() { srv.Close(); pc.Close(); <-done }()
	laddr := pc.LocalAddr().(*net.UDPAddr)

	loadWithChromium(ctx, t, chromium, laddr, pin)

	// With the relay's key, the client's requests carry Chromium's header
	// fields (without, only an Authorization field).
	relayKey, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	var ourAddr net.Addr
	d, err := NewDialer(ClientConfig{
		Addr: laddr.String(), ServerName: fpServerName, Pin: pin, Key: auth.NewKey(),
		AuthKey: relayKey.PublicKey().Bytes(),
		ListenPacket: func(ctx context.Context) (net.PacketConn, error) {
			var lc net.ListenConfig
			c, err := lc.ListenPacket(ctx, "udp", net.JoinHostPort(host, "0"))
			if err == nil {
				ourAddr = c.LocalAddr()
			}
			return c, err
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	s, err := d.Dial(ctx)
	if err != nil {
		t.Fatalf("our dial: %v", err)
	}
	// One request, as Chromium's page load, and its answer: the server's
	// page, which our client takes for a refusal.
	st, err := s.OpenStream(ctx)
	if err != nil {
		t.Fatalf("our stream: %v", err)
	}
	if _, err := io.ReadAll(st); !errors.Is(err, ErrRefused) {
		t.Fatalf("our stream: read %v, want the page taken for a refusal", err)
	}
	st.Close()
	// quic-go sends a path MTU probe every 5 RTTs (well under a
	// millisecond each on loopback) from the end of the handshake unless
	// told not to; any would be in the capture by now.
	time.Sleep(200 * time.Millisecond)
	s.Close()

	dir := t.TempDir()
	pcapPath, keyPath := filepath.Join(dir, "handshakes.pcap"), filepath.Join(dir, "keys.log")
	if err := os.WriteFile(pcapPath, rec.pcap(), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyPath, keylog.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(ctx, tshark, "-r", pcapPath, "-n",
		"-o", "tls.keylog_file:"+keyPath,
		"-d", fmt.Sprintf("udp.port==%d,quic", laddr.Port),
		"-T", "pdml")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("tshark: %v\n%s", err, stderr.Bytes())
	}
	traces, order, err := parseClientTraces(out, laddr.Port)
	if err != nil {
		t.Fatalf("tshark's dissection: %v", err)
	}
	ourPort := strconv.Itoa(ourAddr.(*net.UDPAddr).Port)
	// Chromium's :authority carries the port, which it leaves out for a
	// relay on 443, and its User-Agent says HeadlessChrome; both are
	// Huffman-coded in its HEADERS frame (RFC 9204 section 4.1.2).
	ua := chromeRequestHeader().Get("User-Agent")
	authority := net.JoinHostPort(fpServerName, strconv.Itoa(laddr.Port))
	artefact := int(hpack.HuffmanEncodeLength(authority)-hpack.HuffmanEncodeLength(fpServerName)) +
		int(hpack.HuffmanEncodeLength(strings.Replace(ua, "Chrome/", "HeadlessChrome/", 1))-hpack.HuffmanEncodeLength(ua))
	for _, port := range order {
		tr := traces[port]
		if port == ourPort {
			tr.who = "ours"
			ours = tr
		} else {
			tr.who = "chromium (port " + port + ")"
			tr.requestArtefact = artefact
			chrome = append(chrome, tr)
		}
	}
	if ours == nil {
		t.Fatal("no datagram from our client in the capture")
	}
	return chrome, ours
}

// pdml is the part of tshark's PDML output (-T pdml) that the test reads.
type pdml struct {
	Packets []struct {
		Protos []pdmlField `xml:"proto"`
	} `xml:"packet"`
}

type pdmlField struct {
	Name     string      `xml:"name,attr"`
	ShowName string      `xml:"showname,attr"`
	Show     string      `xml:"show,attr"`
	Size     int         `xml:"size,attr"`
	Fields   []pdmlField `xml:"field"`
	Protos   []pdmlField `xml:"proto"`
}

// walk calls f for every field below p, depth first, in order.
func (p *pdmlField) walk(f func(*pdmlField)) {
	for i := range p.Fields {
		f(&p.Fields[i])
		p.Fields[i].walk(f)
	}
	for i := range p.Protos {
		f(&p.Protos[i])
		p.Protos[i].walk(f)
	}
}

// parseClientTraces reads tshark's PDML of a capture at a server on
// serverPort and returns, per client port, the client's datagrams and
// the order in which the client ports first appeared.
func parseClientTraces(out []byte, serverPort int) (map[string]*clientTrace, []string, error) {
	var doc pdml
	if err := xml.Unmarshal(out, &doc); err != nil {
		return nil, nil, err
	}
	traces := map[string]*clientTrace{}
	var order []string
	for _, pkt := range doc.Packets {
		var src, dst, scid string
		size := -1
		var quics, h3s []*pdmlField
		for i := range pkt.Protos {
			p := &pkt.Protos[i]
			switch p.Name {
			case "http3":
				// After the quic element of the packet it came in.
				h3s = append(h3s, p)
			case "udp":
				p.walk(func(f *pdmlField) {
					switch f.Name {
					case "udp.srcport":
						src = f.Show
					case "udp.dstport":
						dst = f.Show
					case "udp.length":
						if n, err := strconv.Atoi(f.Show); err == nil {
							size = n - 8
						}
					}
				})
			case "quic":
				quics = append(quics, p)
			}
		}
		client := src
		if src == strconv.Itoa(serverPort) {
			client = dst
		}
		tr := traces[client]
		if tr == nil {
			tr = &clientTrace{finished: -1, ackDelays: map[string][]uint64{}, helloBytes: map[uint64]bool{}}
			traces[client] = tr
			order = append(order, client)
		}
		if src == strconv.Itoa(serverPort) {
			for _, q := range quics {
				q.walk(func(f *pdmlField) {
					if f.Name == "quic.scid" && scid == "" {
						scid = f.Show
					}
				})
			}
			if tr.serverCID == "" {
				tr.serverCID = scid
			}
			continue
		}
		if size < 0 || len(quics) == 0 {
			return nil, nil, fmt.Errorf("a datagram to the server that tshark did not dissect as QUIC (%d bytes)", size)
		}
		d := udpDatagram{size: size}
		for _, p := range h3s {
			d.h3 = append(d.h3, parseH3Frames(p)...)
		}
		// Each coalesced packet is a quic element of its own.
		for _, q := range quics {
			kind, dcid, length := "?", "", 0
			var acks []uint64
			var finished bool
			var cryptoOffset uint64
			q.walk(func(f *pdmlField) {
				switch f.Name {
				case "quic.header_form":
					if f.Show == "0" {
						kind = "1-RTT"
					}
				case "quic.long.packet_type":
					kind = map[string]string{"0": "Initial", "1": "0-RTT", "2": "Handshake"}[f.Show]
				case "quic.dcid":
					dcid = f.Show
				case "quic.packet_length":
					length, _ = strconv.Atoi(f.Show)
				case "quic.frame":
					if strings.HasPrefix(f.ShowName, "ACK") && kind != "Initial" {
						d.ackBytes += f.Size
					}
					if kind == "Initial" {
						name, _, _ := strings.Cut(f.ShowName, ",")
						name, _, _ = strings.Cut(name, " ")
						d.initialFrames = append(d.initialFrames, name)
					}
				case "quic.crypto.offset":
					cryptoOffset, _ = strconv.ParseUint(f.Show, 10, 64)
				case "quic.crypto.length":
					n, _ := strconv.ParseUint(f.Show, 10, 64)
					for i := cryptoOffset; i < cryptoOffset+n && kind == "Initial"; i++ {
						if !tr.helloBytes[i] {
							tr.helloBytes[i], d.hello = true, true
						}
					}
				case "quic.ack.ack_delay":
					if n, err := strconv.ParseUint(f.Show, 10, 64); err == nil && (kind == "Initial" || kind == "Handshake") {
						acks = append(acks, n)
					}
				case "tls.handshake.type":
					finished = finished || f.Show == "20" && kind == "Handshake"
				}
			})
			tr.ackDelays[kind] = append(tr.ackDelays[kind], acks...)
			if finished {
				tr.finished, tr.finishedAckDelays = len(tr.datagrams), acks
			}
			d.packets = append(d.packets, kind)
			if kind == "Initial" {
				d.initialBytes += length
			}
			if kind != "Initial" && dcid != "" && !slices.Contains(tr.dcids, dcid) {
				tr.dcids = append(tr.dcids, dcid)
			}
		}
		tr.datagrams = append(tr.datagrams, d)
	}
	return traces, order, nil
}

// parseH3Frames returns the frames in one http3 element of tshark's PDML.
func parseH3Frames(p *pdmlField) []h3Frame {
	var frames []h3Frame
	num := func(f *pdmlField) uint64 {
		n, _ := strconv.ParseUint(f.Show, 10, 64)
		return n
	}
	p.walk(func(f *pdmlField) {
		var cur *h3Frame
		if len(frames) > 0 {
			cur = &frames[len(frames)-1]
		}
		switch {
		case f.Name == "http3.frame_type":
			frames = append(frames, h3Frame{typ: num(f)})
		case cur == nil:
		case f.Name == "http3.frame_length":
			cur.length = num(f)
		case f.Name == "http3.settings.id":
			cur.settings = append(cur.settings, [2]uint64{num(f), 0})
		case f.Name == "http3.settings.value" && len(cur.settings) > 0:
			cur.settings[len(cur.settings)-1][1] = num(f)
		case f.Name == "http3.priority_update_element_id":
			cur.element = num(f)
		case f.Name == "http3.priority_update_field_value":
			cur.fieldValue = f.Show
		}
	})
	return frames
}

// lockedBuffer is a bytes.Buffer safe for concurrent use, for a key log.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) Bytes() []byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.b.Bytes())
}

// pcapConn records every datagram its PacketConn receives and sends, for
// writing out as a pcap file.
type pcapConn struct {
	net.PacketConn

	// hold delays the first datagram to each client that starts with a
	// Handshake packet.
	hold time.Duration

	mu      sync.Mutex
	records []pcapRecord
	held    map[string]bool
}

type pcapRecord struct {
	at       time.Time
	src, dst *net.UDPAddr
	payload  []byte
}

func (c *pcapConn) ReadFrom(b []byte) (int, net.Addr, error) {
	n, addr, err := c.PacketConn.ReadFrom(b)
	if err == nil {
		c.record(addr, c.LocalAddr(), b[:n])
	}
	return n, addr, err
}

func (c *pcapConn) WriteTo(b []byte, addr net.Addr) (int, error) {
	// A long header (0x80) Handshake packet (type 2, bits 0x30) first.
	if c.hold > 0 && len(b) > 0 && b[0]&0xb0 == 0xa0 && c.firstHandshake(addr.String()) {
		time.Sleep(c.hold)
	}
	// Recorded before it is sent, so that the client's answer to it,
	// which another goroutine may record, comes later in the capture.
	c.record(c.LocalAddr(), addr, b)
	return c.PacketConn.WriteTo(b, addr)
}

func (c *pcapConn) record(src, dst net.Addr, b []byte) {
	s, ok1 := src.(*net.UDPAddr)
	d, ok2 := dst.(*net.UDPAddr)
	if !ok1 || !ok2 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.records = append(c.records, pcapRecord{time.Now(), s, d, slices.Clone(b)})
}

// firstHandshake reports whether this is the first time it is called for
// addr.
func (c *pcapConn) firstHandshake(addr string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.held[addr] {
		return false
	}
	if c.held == nil {
		c.held = map[string]bool{}
	}
	c.held[addr] = true
	return true
}

// pcap returns the recorded datagrams as a pcap file of raw IP packets
// (LINKTYPE_RAW), with IPv4 or IPv6 and UDP headers made up around them.
func (c *pcapConn) pcap() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []byte
	out = binary.LittleEndian.AppendUint32(out, 0xa1b2c3d4) // microsecond timestamps
	out = binary.LittleEndian.AppendUint16(out, 2)
	out = binary.LittleEndian.AppendUint16(out, 4)
	out = binary.LittleEndian.AppendUint32(out, 0) // thiszone
	out = binary.LittleEndian.AppendUint32(out, 0) // sigfigs
	out = binary.LittleEndian.AppendUint32(out, 65535)
	out = binary.LittleEndian.AppendUint32(out, 101) // LINKTYPE_RAW
	for _, r := range c.records {
		pkt := ipUDP(r.src, r.dst, r.payload)
		out = binary.LittleEndian.AppendUint32(out, uint32(r.at.Unix()))
		out = binary.LittleEndian.AppendUint32(out, uint32(r.at.Nanosecond()/1000))
		out = binary.LittleEndian.AppendUint32(out, uint32(len(pkt)))
		out = binary.LittleEndian.AppendUint32(out, uint32(len(pkt)))
		out = append(out, pkt...)
	}
	return out
}

// ipUDP wraps payload in a UDP header and an IPv4 or IPv6 header, with
// correct checksums.
func ipUDP(src, dst *net.UDPAddr, payload []byte) []byte {
	udp := binary.BigEndian.AppendUint16(nil, uint16(src.Port))
	udp = binary.BigEndian.AppendUint16(udp, uint16(dst.Port))
	udp = binary.BigEndian.AppendUint16(udp, uint16(8+len(payload)))
	udp = append(udp, 0, 0)
	udp = append(udp, payload...)
	s4, d4 := src.IP.To4(), dst.IP.To4()
	var pseudo, hdr []byte
	if s4 != nil && d4 != nil {
		pseudo = append(append(slices.Clone(s4), d4...), 0, 17)
		pseudo = binary.BigEndian.AppendUint16(pseudo, uint16(len(udp)))
		hdr = []byte{0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0}
		binary.BigEndian.PutUint16(hdr[2:], uint16(20+len(udp)))
		hdr = append(append(hdr, s4...), d4...)
		binary.BigEndian.PutUint16(hdr[10:], ^onesSum(hdr))
	} else {
		s16, d16 := src.IP.To16(), dst.IP.To16()
		pseudo = append(slices.Clone(s16), d16...)
		pseudo = binary.BigEndian.AppendUint32(pseudo, uint32(len(udp)))
		pseudo = append(pseudo, 0, 0, 0, 17)
		hdr = []byte{0x60, 0, 0, 0, 0, 0, 17, 64}
		binary.BigEndian.PutUint16(hdr[4:], uint16(len(udp)))
		hdr = append(append(hdr, s16...), d16...)
	}
	sum := ^onesSum(append(pseudo, udp...))
	if sum == 0 {
		sum = 0xffff
	}
	binary.BigEndian.PutUint16(udp[6:], sum)
	return append(hdr, udp...)
}

// onesSum is the 16-bit one's complement sum of b (RFC 1071).
func onesSum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return uint16(s)
}
