//go:build unix

package quiccarrier

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/xml"
	"fmt"
	"io"
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
//   - the client keeps the server's connection ID in all its packets.
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
				for _, c := range chrome {
					t.Logf("%s", c)
				}
				t.Logf("%s", ours)
				checkInitialLayout(t, chrome, ours, mode.hold > 0)
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
}

// udpDatagram is one UDP datagram from the client: its payload size, the
// QUIC packets in it ("Initial", "Handshake", "0-RTT", "1-RTT"), and
// whether it carries bytes of the ClientHello not sent before (a
// retransmission does not).
type udpDatagram struct {
	size    int
	packets []string
	hello   bool
}

func (d *udpDatagram) String() string {
	return fmt.Sprintf("%d:%s", d.size, strings.Join(d.packets, "+"))
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

	var ourAddr net.Addr
	d, err := NewDialer(ClientConfig{
		Addr: laddr.String(), ServerName: fpServerName, Pin: pin, Key: auth.NewKey(),
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
	// Wait for our first 1-RTT packet (the HTTP/3 SETTINGS), which comes
	// with the Finished or after it.
	for !rec.sawShortHeader(ourAddr.String()) && ctx.Err() == nil {
		time.Sleep(10 * time.Millisecond)
	}
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
	for _, port := range order {
		tr := traces[port]
		if port == ourPort {
			tr.who = "ours"
			ours = tr
		} else {
			tr.who = "chromium (port " + port + ")"
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
	Name   string      `xml:"name,attr"`
	Show   string      `xml:"show,attr"`
	Fields []pdmlField `xml:"field"`
	Protos []pdmlField `xml:"proto"`
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
		var quics []*pdmlField
		for i := range pkt.Protos {
			p := &pkt.Protos[i]
			switch p.Name {
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
		// Each coalesced packet is a quic element of its own.
		for _, q := range quics {
			kind, dcid := "?", ""
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
			if kind != "Initial" && dcid != "" && !slices.Contains(tr.dcids, dcid) {
				tr.dcids = append(tr.dcids, dcid)
			}
		}
		tr.datagrams = append(tr.datagrams, d)
	}
	return traces, order, nil
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

// sawShortHeader reports whether a datagram from addr held a short
// header (1-RTT) packet, alone or after long header packets.
func (c *pcapConn) sawShortHeader(addr string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, r := range c.records {
		if r.src.String() != addr {
			continue
		}
		for b := r.payload; len(b) > 0; {
			if b[0]&0x80 == 0 {
				return true
			}
			n := longHeaderPacketLen(b)
			if n <= 0 || n > len(b) {
				break
			}
			b = b[n:]
		}
	}
	return false
}

// longHeaderPacketLen returns the length of the long header packet at the
// start of b (RFC 9000 section 17.2), or 0 if it cannot tell.
func longHeaderPacketLen(b []byte) int {
	if len(b) < 7 {
		return 0
	}
	p := 5
	p += 1 + int(b[p]) // DCID
	if len(b) <= p {
		return 0
	}
	p += 1 + int(b[p]) // SCID
	if len(b) <= p {
		return 0
	}
	if (b[0]&0x30)>>4 == 0 { // Initial: token
		tl, n, err := readVarint(b[p:])
		if err != nil {
			return 0
		}
		p += n + int(tl)
	}
	if len(b) <= p {
		return 0
	}
	l, n, err := readVarint(b[p:])
	if err != nil {
		return 0
	}
	return p + n + int(l)
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
