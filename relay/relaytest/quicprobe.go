package relaytest

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"github.com/quic-go/quic-go/qlog"
	"github.com/quic-go/quic-go/qlogwriter"
	"github.com/quic-go/quic-go/quicvarint"
)

// ErrUDPClosed is the error of [ProbeQUIC] when nothing listens on UDP
// at the address: the host answered with ICMP port unreachable.
var ErrUDPClosed = errors.New("UDP port closed (ICMP port unreachable)")

// ProbeGETs is how many sequential GET / requests [ProbeQUIC] and
// [ProbeH2] time on their one connection, after a first one.
const ProbeGETs = 20

// sizeSlack is how many long-header bytes two handshake datagrams of one
// server may differ by in [QUICView.Diff]. Bytes vary from one handshake
// to the next, and move between a server's datagrams when the first is
// full: quic-go servers send a GREASE transport parameter of 0 to 15
// random bytes with a 1- or 2-byte id, an ACK frame's ACK Delay is a
// varint of 1 to 4 bytes, and an ECDSA signature's DER encoding varies by
// a byte or two.
const sizeSlack = 24

// probeHeader is the request header of every probe's GET /, a browser's
// (Chromium's) minus the client hints, so that a server answers as it
// answers browsers. Accept-Encoding is sent as is, and a compressed
// body is kept compressed: the bytes compared are the bytes sent.
var probeHeader = http.Header{
	"User-Agent":      {"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/136.0.0.0 Safari/537.36"},
	"Accept":          {"text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,*/*;q=0.8"},
	"Accept-Encoding": {"gzip, deflate, br, zstd"},
	"Accept-Language": {"en-US,en;q=0.9"},
}

// An HTTPView is what a prober learns from GET / on one connection: the
// first response, without its Date header, its time, and the mean time
// of [ProbeGETs] sequential requests after it.
type HTTPView struct {
	// Addr is the "host:port" probed.
	Addr string
	// Status is the first response's status code.
	Status int
	// Header is the first response's header, without Date. HTTP/2 and
	// HTTP/3 header field order is not kept (net/http's Header is a map).
	Header http.Header
	// Body is the first response's body as sent (not decompressed).
	Body []byte
	// FirstGET is the first request's duration, from sending the
	// request to reading the whole body. Some servers take longer over
	// the first request of a connection (Caddy 2.6 over HTTP/3: about
	// 1 to 6 ms on loopback where later ones take 0.3).
	FirstGET time.Duration
	// MeanGET is the mean duration of the later requests.
	MeanGET time.Duration
}

// An H2View is what a prober sees of an HTTPS server over TCP with
// HTTP/2 ([ProbeH2]).
type H2View struct {
	// Certs is the server's certificate chain, leaf first, DER.
	Certs [][]byte
	// ALPN is the negotiated application protocol, "h2".
	ALPN string
	HTTPView
}

// A QUICView is what a censor's QUIC prober sees of a server
// ([ProbeQUIC]), every field observable without the server's keys or
// from a handshake anyone may make.
//
// What it does not hold: the server's transport parameters it does not
// recognise (GREASE parameters, unknown ids) and their order, since
// quic-go reports only the parameters it parses; the order of HTTP/3
// response header fields; the server's packets' frame layout.
type QUICView struct {
	// Certs is the server's certificate chain, leaf first, DER.
	Certs [][]byte
	// ALPN is the negotiated application protocol, "h3".
	ALPN string
	// Version is the negotiated QUIC version.
	Version quic.Version
	// SCIDLen is the length of the connection ID the server chose, from
	// its first long-header packet.
	SCIDLen int
	// TransportParams are the server's QUIC transport parameters, nil if
	// they were not seen.
	TransportParams *TransportParams
	// Settings is the server's HTTP/3 SETTINGS frame, in the order sent,
	// nil if none arrived.
	Settings []Setting
	// ControlFrames lists the types of the frames the server sent on its
	// control stream after SETTINGS while the probe ran.
	ControlFrames []uint64
	// UniStreams lists the types of the unidirectional streams the server
	// opened, by stream ID.
	UniStreams []uint64
	// VersionNegotiation is the server's answer to a long-header packet
	// of an unknown version, nil if it gave none.
	VersionNegotiation *VersionNegotiation
	// Handshake lists the datagrams the server sent from its first until
	// the probe's first request that carry long-header (handshake)
	// packets, in the order received.
	Handshake []Datagram
	HTTPView
}

// A Setting is one HTTP/3 setting (RFC 9114 section 7.2.4).
type Setting struct {
	ID, Value uint64
}

// TransportParams are the server's QUIC transport parameters (RFC 9000
// section 18.2) as quic-go parsed them, without the connection IDs and
// tokens that change on every connection (only whether they were sent).
type TransportParams struct {
	DisableActiveMigration         bool
	MaxIdleTimeout                 time.Duration
	MaxUDPPayloadSize              int64
	AckDelayExponent               uint8
	MaxAckDelay                    time.Duration
	ActiveConnectionIDLimit        uint64
	InitialMaxData                 int64
	InitialMaxStreamDataBidiLocal  int64
	InitialMaxStreamDataBidiRemote int64
	InitialMaxStreamDataUni        int64
	InitialMaxStreamsBidi          int64
	InitialMaxStreamsUni           int64
	MaxDatagramFrameSize           int64
	EnableResetStreamAt            bool
	StatelessResetToken            bool
	PreferredAddress               bool
	RetrySourceConnectionID        bool
	InitialSourceConnectionIDLen   int
}

// A VersionNegotiation is a server's Version Negotiation packet (RFC 9000
// section 17.2.1).
type VersionNegotiation struct {
	// Versions are the versions listed, in order.
	Versions []quic.Version
	// Size is the datagram's size.
	Size int
	// EchoesCIDs reports whether the packet's connection IDs are the
	// probe's, swapped, as RFC 9000 requires.
	EchoesCIDs bool
}

// A Datagram is one UDP datagram a server sent.
type Datagram struct {
	// Size is its size in bytes.
	Size int
	// Long is how many of its bytes are long-header packets.
	Long int
	// Packets lists the packets coalesced in it (RFC 9000 section 12.2)
	// by type: "Initial", "0-RTT", "Handshake", "Retry", "1-RTT", or
	// "Version Negotiation".
	Packets []string
}

// String returns the datagram as "size[Initial+Handshake]", or
// "size[Handshake+1-RTT,long=n]" when a short-header packet is coalesced.
func (d Datagram) String() string {
	if d.Long != d.Size {
		return fmt.Sprintf("%d[%s,long=%d]", d.Size, strings.Join(d.Packets, "+"), d.Long)
	}
	return fmt.Sprintf("%d[%s]", d.Size, strings.Join(d.Packets, "+"))
}

// ackOnlySize bounds a datagram of nothing but one small Handshake packet:
// an acknowledgement (or HANDSHAKE_DONE's companion) that a server sends
// on its own or coalesces into its flight's last datagram as the client's
// packets happen to arrive. Caddy does both from one connection to the
// next.
const ackOnlySize = 64

// trimAcks returns hs without a trailing datagram of one small Handshake
// packet (see ackOnlySize).
func trimAcks(hs []Datagram) []Datagram {
	if n := len(hs); n > 1 {
		if last := hs[n-1]; last.Size <= ackOnlySize && len(last.Packets) == 1 && last.Packets[0] == "Handshake" {
			return hs[:n-1]
		}
	}
	return hs
}

// longPackets returns d's packet types without a trailing "1-RTT".
func (d Datagram) longPackets() string {
	return strings.Join(slices.DeleteFunc(slices.Clone(d.Packets), func(p string) bool { return !isLong(p) }), "+")
}

// ProbeQUIC plays a censor's QUIC prober against addr: it sends a packet
// of an unknown version, then makes an HTTP/3 connection with SNI
// [CoverName] (verifying no certificate, as a prober need not; offering
// X25519 and P-256 key shares only, so that its ClientHello fits one
// datagram), records what the server shows (see [QUICView]) and sends
// 1+[ProbeGETs] sequential GET / requests on it. It fails if the HTTP/3
// connection or a request fails, at once with [ErrUDPClosed] if the host
// answers with ICMP port unreachable.
func ProbeQUIC(ctx context.Context, addr string) (*QUICView, error) {
	raddr, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, fmt.Errorf("quic probe of %s: %w", addr, err)
	}
	v := &QUICView{}
	if v.VersionNegotiation, err = probeVersionNegotiation(ctx, raddr); err != nil {
		return nil, fmt.Errorf("quic probe of %s: %w", addr, err)
	}

	udp, err := net.ListenUDP("udp", nil)
	if err != nil {
		return nil, fmt.Errorf("quic probe of %s: %w", addr, err)
	}
	rec := &recordingConn{udp: udp, on: true}
	defer rec.Close()
	tr := &quic.Transport{Conn: rec}
	defer tr.Close()
	tp := &tpRecorder{}
	conn, err := tr.Dial(ctx, raddr, &tls.Config{
		ServerName:         CoverName,
		InsecureSkipVerify: true,
		NextProtos:         []string{http3.NextProtoH3},
		// No post-quantum key share: the ClientHello then fits one
		// Initial datagram, and the server's flight does not depend on
		// when a second one arrives (whether it ACKs the first alone).
		CurvePreferences: []tls.CurveID{tls.X25519, tls.CurveP256},
	}, &quic.Config{
		Tracer: func(context.Context, bool, quic.ConnectionID) qlogwriter.Trace { return tp },
	})
	if err != nil {
		return nil, fmt.Errorf("quic probe of %s: %w", addr, err)
	}
	st := conn.ConnectionState()
	for _, c := range st.TLS.PeerCertificates {
		v.Certs = append(v.Certs, c.Raw)
	}
	v.ALPN = st.TLS.NegotiatedProtocol
	v.Version = st.Version

	ctl := &controlReader{settingsIn: make(chan struct{})}
	var wg sync.WaitGroup
	wg.Go(func() { ctl.acceptLoop(conn) })
	closeConn := func() {
		conn.CloseWithError(quic.ApplicationErrorCode(http3.ErrCodeNoError), "")
		wg.Wait()
	}
	defer closeConn()

	cc := (&http3.Transport{DisableCompression: true}).NewRawClientConn(conn)
	rec.stop()
	hv, _, err := probeGETs(ctx, addr, cc.RoundTrip)
	if err != nil {
		return nil, fmt.Errorf("quic probe of %s: %w", addr, err)
	}
	v.HTTPView = *hv
	select {
	case <-ctl.settingsIn:
	case <-ctx.Done():
	case <-time.After(2 * time.Second):
	}
	closeConn()

	v.Settings, v.ControlFrames, v.UniStreams = ctl.result()
	v.TransportParams = tp.result()
	for _, d := range rec.datagrams() {
		if v.SCIDLen == 0 && len(d) > 6 && d[0]&0x80 != 0 {
			if dl := int(d[5]); len(d) > 6+dl {
				v.SCIDLen = int(d[6+dl])
			}
		}
		if dg := parseDatagram(d); slices.ContainsFunc(dg.Packets, isLong) {
			v.Handshake = append(v.Handshake, dg)
		}
	}
	return v, nil
}

// isLong reports whether packet, a [Datagram] packet type, has a long
// header.
func isLong(packet string) bool { return packet != "1-RTT" }

// ProbeH2 plays a censor's prober against addr over TCP: a TLS connection
// with SNI [CoverName] offering h2 and http/1.1, then 1+[ProbeGETs]
// sequential GET / requests over HTTP/2 on it (net/http's client). It
// fails if the server does not choose h2.
func ProbeH2(ctx context.Context, addr string) (*H2View, error) {
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetHTTP2(true)
	tr := &http.Transport{
		TLSClientConfig:    &tls.Config{ServerName: CoverName, InsecureSkipVerify: true},
		DisableCompression: true,
		Protocols:          &protos,
	}
	defer tr.CloseIdleConnections()
	cc, err := tr.NewClientConn(ctx, "https", addr)
	if err != nil {
		return nil, fmt.Errorf("h2 probe of %s: %w", addr, err)
	}
	defer cc.Close()
	hv, st, err := probeGETs(ctx, addr, cc.RoundTrip)
	if err != nil {
		return nil, fmt.Errorf("h2 probe of %s: %w", addr, err)
	}
	v := &H2View{HTTPView: *hv}
	if st != nil {
		v.ALPN = st.NegotiatedProtocol
		for _, cert := range st.PeerCertificates {
			v.Certs = append(v.Certs, cert.Raw)
		}
	}
	if v.ALPN != "h2" {
		return nil, fmt.Errorf("h2 probe of %s: server chose ALPN %q", addr, v.ALPN)
	}
	return v, nil
}

// probeGETs sends one GET / request with rt, then ProbeGETs more, one
// after the other, and returns the first response, the times, and the
// first response's TLS state if rt reports one.
func probeGETs(ctx context.Context, addr string, rt func(*http.Request) (*http.Response, error)) (*HTTPView, *tls.ConnectionState, error) {
	var st *tls.ConnectionState
	v := &HTTPView{Addr: addr}
	var total time.Duration
	for i := range ProbeGETs + 1 {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+CoverName+"/", nil)
		if err != nil {
			return nil, nil, err
		}
		req.Header = probeHeader.Clone()
		start := time.Now()
		resp, err := rt(req)
		if err != nil {
			return nil, nil, fmt.Errorf("GET %d: %w", i+1, err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return nil, nil, fmt.Errorf("GET %d: body: %w", i+1, err)
		}
		if i == 0 {
			v.FirstGET = time.Since(start)
			v.Status, v.Header, v.Body = resp.StatusCode, resp.Header, body
			v.Header.Del("Date")
			st = resp.TLS
		} else {
			total += time.Since(start)
		}
	}
	v.MeanGET = total / ProbeGETs
	return v, st, nil
}

// probeVersionNegotiation sends a 1200-byte long-header packet of the
// reserved version 0x1a2a3a4a (RFC 9000 section 15) to addr, up to three
// times, and returns the server's Version Negotiation packet, or nil if
// none comes within about three seconds, or [ErrUDPClosed].
func probeVersionNegotiation(ctx context.Context, addr *net.UDPAddr) (*VersionNegotiation, error) {
	c, err := net.DialUDP("udp", nil, addr)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	dcid, scid := make([]byte, 8), make([]byte, 8)
	rand.Read(dcid)
	rand.Read(scid)
	p := make([]byte, 1200)
	p[0] = 0xc0
	binary.BigEndian.PutUint32(p[1:], 0x1a2a3a4a)
	p[5] = 8
	copy(p[6:], dcid)
	p[14] = 8
	copy(p[15:], scid)
	rand.Read(p[23:])
	buf := make([]byte, 2048)
	for range 3 {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		c.Write(p)
		c.SetReadDeadline(time.Now().Add(time.Second))
		n, err := c.Read(buf)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			if errors.Is(err, syscall.ECONNREFUSED) {
				return nil, ErrUDPClosed
			}
			return nil, err
		}
		return parseVersionNegotiation(buf[:n], dcid, scid), nil
	}
	return nil, ctx.Err()
}

// parseVersionNegotiation parses b as the answer to a probe with dcid
// and scid; a datagram that is no Version Negotiation packet is recorded
// as one listing no version.
func parseVersionNegotiation(b, dcid, scid []byte) *VersionNegotiation {
	vn := &VersionNegotiation{Size: len(b)}
	if len(b) < 7 || b[0]&0x80 == 0 || binary.BigEndian.Uint32(b[1:]) != 0 {
		return vn
	}
	rest := b[5:]
	gotD, rest, ok := cutCID(rest)
	if !ok {
		return vn
	}
	gotS, rest, ok := cutCID(rest)
	if !ok {
		return vn
	}
	vn.EchoesCIDs = bytes.Equal(gotD, scid) && bytes.Equal(gotS, dcid)
	for ; len(rest) >= 4; rest = rest[4:] {
		vn.Versions = append(vn.Versions, quic.Version(binary.BigEndian.Uint32(rest)))
	}
	return vn
}

// cutCID cuts a length-prefixed connection ID off b.
func cutCID(b []byte) (cid, rest []byte, ok bool) {
	if len(b) < 1 || len(b) < 1+int(b[0]) {
		return nil, nil, false
	}
	return b[1 : 1+int(b[0])], b[1+int(b[0]):], true
}

// parseDatagram lists the packets coalesced in d by their unprotected
// header fields: a long header's type bits and Length (RFC 9000 section
// 17.2), a short header running to the end.
func parseDatagram(d []byte) Datagram {
	dg := Datagram{Size: len(d)}
	for len(d) > 0 {
		if d[0]&0x80 == 0 {
			dg.Packets = append(dg.Packets, "1-RTT")
			break
		}
		if len(d) < 7 {
			dg.Packets = append(dg.Packets, "malformed")
			break
		}
		typ := longType(binary.BigEndian.Uint32(d[1:]), d[0])
		dg.Packets = append(dg.Packets, typ)
		if typ == "Retry" || typ == "Version Negotiation" || typ == "unknown" {
			d = nil // no Length field: the packet fills the datagram
			break
		}
		n, ok := longPacketLen(d, typ == "Initial")
		if !ok {
			dg.Packets[len(dg.Packets)-1] += "(malformed)"
			break
		}
		d = d[n:]
	}
	dg.Long = dg.Size - len(d)
	return dg
}

// longPacketLen returns the length of the long-header packet at the
// start of d, from its connection IDs, token (Initial packets only) and
// Length field.
func longPacketLen(d []byte, initial bool) (int, bool) {
	rest, ok := d[5:], true
	if _, rest, ok = cutCID(rest); ok {
		_, rest, ok = cutCID(rest)
	}
	var n uint64
	if ok && initial {
		if n, rest, ok = cutVarint(rest); ok && uint64(len(rest)) >= n {
			rest = rest[n:]
		} else {
			ok = false
		}
	}
	if ok {
		n, rest, ok = cutVarint(rest)
	}
	if !ok || uint64(len(rest)) < n {
		return 0, false
	}
	return len(d) - len(rest) + int(n), true
}

// longType names a long-header packet's type for QUIC v1 (RFC 9000) and
// v2 (RFC 9369), whose type bits differ.
func longType(version uint32, first byte) string {
	t := first >> 4 & 3
	switch version {
	case 0:
		return "Version Negotiation"
	case 1:
		return [...]string{"Initial", "0-RTT", "Handshake", "Retry"}[t]
	case 0x6b3343cf:
		return [...]string{"Retry", "Initial", "0-RTT", "Handshake"}[t]
	}
	return "unknown"
}

// cutVarint cuts a QUIC variable-length integer off b.
func cutVarint(b []byte) (uint64, []byte, bool) {
	v, n, err := quicvarint.Parse(b)
	if err != nil {
		return 0, nil, false
	}
	return v, b[n:], true
}

// recordingConn is a UDP socket that keeps a copy of every datagram it
// reads until stop is called. It passes quic-go the socket's buffer and
// syscall methods, so that quic-go sets it up as it does a bare socket,
// but not ReadMsgUDP, whose use would bypass ReadFrom.
type recordingConn struct {
	udp *net.UDPConn
	mu  sync.Mutex
	on  bool
	got [][]byte
}

func (c *recordingConn) ReadFrom(p []byte) (int, net.Addr, error) {
	n, addr, err := c.udp.ReadFrom(p)
	if n > 0 {
		c.mu.Lock()
		if c.on {
			c.got = append(c.got, bytes.Clone(p[:n]))
		}
		c.mu.Unlock()
	}
	return n, addr, err
}

func (c *recordingConn) WriteTo(p []byte, addr net.Addr) (int, error) { return c.udp.WriteTo(p, addr) }
func (c *recordingConn) Close() error                                 { return c.udp.Close() }
func (c *recordingConn) LocalAddr() net.Addr                          { return c.udp.LocalAddr() }
func (c *recordingConn) SetDeadline(t time.Time) error                { return c.udp.SetDeadline(t) }
func (c *recordingConn) SetReadDeadline(t time.Time) error            { return c.udp.SetReadDeadline(t) }
func (c *recordingConn) SetWriteDeadline(t time.Time) error           { return c.udp.SetWriteDeadline(t) }
func (c *recordingConn) SetReadBuffer(n int) error                    { return c.udp.SetReadBuffer(n) }
func (c *recordingConn) SetWriteBuffer(n int) error                   { return c.udp.SetWriteBuffer(n) }
func (c *recordingConn) SyscallConn() (syscall.RawConn, error)        { return c.udp.SyscallConn() }

func (c *recordingConn) stop() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.on = false
}

func (c *recordingConn) datagrams() [][]byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.got
}

// tpRecorder is a qlog trace that keeps the peer's transport parameters.
// quic-go calls it from the connection's goroutines.
type tpRecorder struct {
	mu sync.Mutex
	tp *TransportParams
}

func (r *tpRecorder) AddProducer() qlogwriter.Recorder { return r }

func (r *tpRecorder) RecordEvent(ev qlogwriter.Event) {
	p, ok := ev.(qlog.ParametersSet)
	if !ok || p.Initiator != qlog.InitiatorRemote {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.tp = &TransportParams{
		DisableActiveMigration:         p.DisableActiveMigration,
		MaxIdleTimeout:                 p.MaxIdleTimeout,
		MaxUDPPayloadSize:              int64(p.MaxUDPPayloadSize),
		AckDelayExponent:               p.AckDelayExponent,
		MaxAckDelay:                    p.MaxAckDelay,
		ActiveConnectionIDLimit:        p.ActiveConnectionIDLimit,
		InitialMaxData:                 int64(p.InitialMaxData),
		InitialMaxStreamDataBidiLocal:  int64(p.InitialMaxStreamDataBidiLocal),
		InitialMaxStreamDataBidiRemote: int64(p.InitialMaxStreamDataBidiRemote),
		InitialMaxStreamDataUni:        int64(p.InitialMaxStreamDataUni),
		InitialMaxStreamsBidi:          p.InitialMaxStreamsBidi,
		InitialMaxStreamsUni:           p.InitialMaxStreamsUni,
		MaxDatagramFrameSize:           int64(p.MaxDatagramFrameSize),
		EnableResetStreamAt:            p.EnableResetStreamAt,
		StatelessResetToken:            p.StatelessResetToken != nil,
		PreferredAddress:               p.PreferredAddress != nil,
		RetrySourceConnectionID:        p.RetrySourceConnectionID.Len() > 0,
		InitialSourceConnectionIDLen:   p.InitialSourceConnectionID.Len(),
	}
}

func (r *tpRecorder) Close() error { return nil }

func (r *tpRecorder) result() *TransportParams {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.tp
}

// controlReader reads the server's unidirectional streams in place of
// http3's client, which gets none of them: the probe's requests need no
// server setting, and the server cannot use a QPACK dynamic table the
// client did not allow (RFC 9204 section 3.2.3).
type controlReader struct {
	settingsIn chan struct{} // closed once SETTINGS was read

	mu       sync.Mutex
	settings []Setting
	frames   []uint64
	streams  map[quic.StreamID]uint64
}

// acceptLoop reads every unidirectional stream conn's server opens until
// conn closes.
func (r *controlReader) acceptLoop(conn *quic.Conn) {
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		str, err := conn.AcceptUniStream(context.Background())
		if err != nil {
			return
		}
		wg.Go(func() { r.read(str) })
	}
}

func (r *controlReader) read(str *quic.ReceiveStream) {
	br := quicvarint.NewReader(str)
	typ, err := quicvarint.Read(br)
	if err != nil {
		return
	}
	r.mu.Lock()
	if r.streams == nil {
		r.streams = make(map[quic.StreamID]uint64)
	}
	r.streams[str.StreamID()] = typ
	r.mu.Unlock()
	if typ != 0 { // not the control stream (RFC 9114 section 6.2.1)
		io.Copy(io.Discard, br)
		return
	}
	for first := true; ; first = false {
		ft, err := quicvarint.Read(br)
		if err != nil {
			return
		}
		n, err := quicvarint.Read(br)
		if err != nil || n > 1<<16 {
			return
		}
		payload := make([]byte, n)
		if _, err := io.ReadFull(br, payload); err != nil {
			return
		}
		r.mu.Lock()
		// A second control stream is a server's error (RFC 9114 section
		// 6.2.1); its frames are listed as later frames.
		if first && ft == 0x4 && r.settings == nil {
			r.settings = []Setting{} // received, if empty
			for p := payload; len(p) > 0; {
				id, rest, ok := cutVarint(p)
				if !ok {
					break
				}
				val, rest, ok := cutVarint(rest)
				if !ok {
					break
				}
				r.settings, p = append(r.settings, Setting{id, val}), rest
			}
			close(r.settingsIn)
		} else {
			r.frames = append(r.frames, ft)
		}
		r.mu.Unlock()
	}
}

func (r *controlReader) result() (settings []Setting, frames, streams []uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	ids := make([]quic.StreamID, 0, len(r.streams))
	for id := range r.streams {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		streams = append(streams, r.streams[id])
	}
	return r.settings, r.frames, streams
}

// UDPClosed reports whether nothing listens on UDP at addr: it sends a
// QUIC Initial-sized datagram (1200 bytes that no server can decrypt) from
// a connected socket, up to three times, and reports true once a read
// fails with ECONNREFUSED, the ICMP port unreachable a host without the
// service answers with. An answer, or silence for about 1.5 seconds (a
// server dropping the datagram, or a firewall), is false.
func UDPClosed(addr string) bool {
	c, err := net.Dial("udp", addr)
	if err != nil {
		return false
	}
	defer c.Close()
	p := make([]byte, 1200)
	rand.Read(p)
	p[0] = 0xc0
	binary.BigEndian.PutUint32(p[1:], 1)
	p[5] = 8
	buf := make([]byte, 2048)
	for range 3 {
		if _, err := c.Write(p); errors.Is(err, syscall.ECONNREFUSED) {
			return true
		}
		c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		_, err := c.Read(buf)
		switch {
		case err == nil:
			return false
		case errors.Is(err, syscall.ECONNREFUSED):
			return true
		}
	}
	return false
}

// Diff lists every difference between a and b that a censor could use to
// tell the two servers apart, one line each; none means the prober saw
// the same server. What changes on every connection is left out:
// connection IDs, tokens, GREASE values (only how many and where), and
// handshake datagrams' long-header bytes within a few bytes (signatures),
// 1-RTT packets coalesced with handshake packets, which a server adds
// or not as its 0.5-RTT data (SETTINGS) happens to be ready, and a last
// datagram of one small Handshake packet (an acknowledgement), which a
// server sends alone or within its last datagram as the client's packets
// happen to arrive. Timing is left
// out too: compare MeanGET ratios, not durations, and only as a ratio of
// h3 to h2 on one server.
func (a *QUICView) Diff(b *QUICView) []string {
	var d differ
	if !equalChains(a.Certs, b.Certs) {
		d.add("certificate chain: %s vs %s", describeChain(a.Certs), describeChain(b.Certs))
	}
	d.cmp("ALPN", a.ALPN, b.ALPN)
	d.cmp("QUIC version", a.Version, b.Version)
	d.cmp("server connection ID length", a.SCIDLen, b.SCIDLen)
	switch {
	case a.TransportParams == nil && b.TransportParams == nil:
	case a.TransportParams == nil || b.TransportParams == nil:
		d.add("transport parameters: %v vs %v", a.TransportParams, b.TransportParams)
	default:
		va, vb := reflect.ValueOf(*a.TransportParams), reflect.ValueOf(*b.TransportParams)
		for i := range va.NumField() {
			d.cmp("transport parameter "+va.Type().Field(i).Name, va.Field(i).Interface(), vb.Field(i).Interface())
		}
	}
	d.cmp("SETTINGS", settingsString(a.Settings), settingsString(b.Settings))
	d.cmp("control stream frames after SETTINGS", greaseList(a.ControlFrames), greaseList(b.ControlFrames))
	d.cmp("server unidirectional stream types", greaseList(a.UniStreams), greaseList(b.UniStreams))
	d.cmp("version negotiation", vnString(a.VersionNegotiation), vnString(b.VersionNegotiation))
	ah, bh := trimAcks(a.Handshake), trimAcks(b.Handshake)
	if len(ah) != len(bh) {
		d.add("handshake datagrams: %v vs %v", a.Handshake, b.Handshake)
	} else {
		for i := range ah {
			x, y := ah[i], bh[i]
			if x.longPackets() != y.longPackets() || x.Long-y.Long > sizeSlack || y.Long-x.Long > sizeSlack {
				d.add("handshake datagram %d: %v vs %v", i+1, x, y)
			}
		}
	}
	d.lines = append(d.lines, a.HTTPView.Diff(&b.HTTPView)...)
	return d.lines
}

// Diff lists the differences between the responses a and b, one line
// each: status, header fields (Alt-Svc compared with the probed port
// written as "SELF", so that two servers advertising themselves agree) and
// body bytes. Times are not compared.
func (a *HTTPView) Diff(b *HTTPView) []string {
	var d differ
	d.cmp("status", a.Status, b.Status)
	ha, hb := selfHeader(a), selfHeader(b)
	keys := map[string]bool{}
	for k := range ha {
		keys[k] = true
	}
	for k := range hb {
		keys[k] = true
	}
	for _, k := range slices.Sorted(maps.Keys(keys)) {
		d.cmp("header "+k, fmt.Sprintf("%q", ha[k]), fmt.Sprintf("%q", hb[k]))
	}
	if !bytes.Equal(a.Body, b.Body) {
		d.add("body: %d bytes %q vs %d bytes %q", len(a.Body), clip(a.Body), len(b.Body), clip(b.Body))
	}
	return d.lines
}

// selfHeader returns v's header with the probed port in Alt-Svc written
// as "SELF".
func selfHeader(v *HTTPView) http.Header {
	h := v.Header.Clone()
	if h == nil {
		return http.Header{}
	}
	_, port, err := net.SplitHostPort(v.Addr)
	if err != nil {
		return h
	}
	for i, s := range h["Alt-Svc"] {
		h["Alt-Svc"][i] = strings.ReplaceAll(s, `":`+port+`"`, `":SELF"`)
	}
	return h
}

func clip(b []byte) []byte { return b[:min(len(b), 40)] }

type differ struct{ lines []string }

func (d *differ) add(format string, args ...any) {
	d.lines = append(d.lines, fmt.Sprintf(format, args...))
}

func (d *differ) cmp(what string, a, b any) {
	if a != b {
		d.add("%s: %v vs %v", what, a, b)
	}
}

func equalChains(a, b [][]byte) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !bytes.Equal(a[i], b[i]) {
			return false
		}
	}
	return true
}

func describeChain(certs [][]byte) string {
	var parts []string
	for _, c := range certs {
		sum := sha256.Sum256(c)
		parts = append(parts, fmt.Sprintf("%d bytes sha256 %x", len(c), sum[:6]))
	}
	return "[" + strings.Join(parts, ", ") + "]"
}

// isGrease reports whether x is a reserved (GREASE) HTTP/3 setting,
// frame or stream type: 0x1f * N + 0x21 (RFC 9114 sections 6.2.3, 7.2.8,
// 7.2.4.1).
func isGrease(x uint64) bool { return x >= 0x21 && (x-0x21)%0x1f == 0 }

func settingsString(s []Setting) string {
	if s == nil {
		return "none"
	}
	var parts []string
	for _, st := range s {
		if isGrease(st.ID) {
			parts = append(parts, "GREASE")
		} else {
			parts = append(parts, fmt.Sprintf("%#x=%d", st.ID, st.Value))
		}
	}
	return "[" + strings.Join(parts, " ") + "]"
}

func greaseList(xs []uint64) string {
	var parts []string
	for _, x := range xs {
		if isGrease(x) {
			parts = append(parts, "GREASE")
		} else {
			parts = append(parts, "0x"+strconv.FormatUint(x, 16))
		}
	}
	return "[" + strings.Join(parts, " ") + "]"
}

// vnString describes vn with its GREASE versions (RFC 9000 section 15),
// which servers such as quic-go place at random, counted apart.
func vnString(vn *VersionNegotiation) string {
	if vn == nil {
		return "no answer"
	}
	var parts []string
	grease := 0
	for _, v := range vn.Versions {
		if uint32(v)&0x0f0f0f0f == 0x0a0a0a0a {
			grease++
		} else {
			parts = append(parts, fmt.Sprintf("%#x", uint32(v)))
		}
	}
	return fmt.Sprintf("%d bytes, echoes IDs %v, versions [%s] and %d GREASE", vn.Size, vn.EchoesCIDs, strings.Join(parts, " "), grease)
}
