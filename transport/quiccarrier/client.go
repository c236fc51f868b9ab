package quiccarrier

import (
	"bytes"
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"sync/atomic"
	"time"

	quic "github.com/apernet/quic-go"
	"github.com/apernet/quic-go/http3"

	"github.com/merpati/merpati/transport"
	"github.com/merpati/merpati/transport/auth"
	"github.com/merpati/merpati/transport/tlscarrier"
)

// HTTP/3 error codes (RFC 9114 section 8.1).
const (
	errNoError          = 0x100 // H3_NO_ERROR
	errRequestCancelled = 0x10c // H3_REQUEST_CANCELLED
)

// ErrRefused means the relay answered a stream with something other than
// "200": it did not accept the token, and the answer came from its cover
// site.
var ErrRefused = errors.New("quiccarrier: relay refused the stream")

// ClientConfig configures a [Dialer].
type ClientConfig struct {
	// Addr is the relay's "host:port" (UDP). Required.
	Addr string
	// ServerName is the SNI sent in the hello and the :authority of every
	// request: the cover site's name. Required.
	ServerName string
	// Pin is the SHA-256 of the relay certificate's SubjectPublicKeyInfo
	// (the same certificate as the TLS carrier's). Required.
	Pin [32]byte
	// Key is the person's access key. Required.
	Key auth.Key
	// AuthKey is the relay's static X25519 public key (the link's "ak"),
	// under which the hello's random carries a sealed token, which the
	// relay checks at once whatever its number of keys (see
	// [NewSealedRandom]); nil sends a nonce and a plain token, which the
	// relay checks against every key.
	AuthKey []byte
	// ListenPacket opens the UDP socket for one session; nil means an
	// unconnected UDP socket on an ephemeral port.
	ListenPacket func(ctx context.Context) (net.PacketConn, error)
	// Resolver resolves Addr's host when it is a name; nil means the
	// system's.
	Resolver *net.Resolver
	// KeepAlive is the interval of QUIC PINGs that keep NAT bindings and
	// the relay's idle timer alive while streams are open, as Chromium's
	// do; zero means 15 seconds. A session with no stream open sends none
	// and ends at its idle timeout (Chromium's 30 s, or the relay's if
	// shorter); the next stream opens a new one.
	KeepAlive time.Duration
	// Now returns the current time for the token; nil means time.Now.
	Now func() time.Time
	// Logger receives debug messages; nil discards.
	Logger *slog.Logger
}

func (c *ClientConfig) check() error {
	switch {
	case c.Addr == "":
		return errors.New("quiccarrier: ClientConfig.Addr: required")
	case c.ServerName == "":
		return errors.New("quiccarrier: ClientConfig.ServerName: required")
	case c.Pin == [32]byte{}:
		return errors.New("quiccarrier: ClientConfig.Pin: required")
	case c.Key.IsZero():
		return errors.New("quiccarrier: ClientConfig.Key: required")
	}
	if _, _, err := net.SplitHostPort(c.Addr); err != nil {
		return fmt.Errorf("quiccarrier: ClientConfig.Addr: %w", err)
	}
	return nil
}

// A Dialer opens QUIC-carrier sessions to one relay. It is safe for
// concurrent use.
type Dialer struct {
	cfg     ClientConfig
	log     *slog.Logger
	authKey *ecdh.PublicKey // nil: plain tokens
}

var _ transport.Dialer = (*Dialer)(nil)

// NewDialer checks cfg and returns a Dialer.
func NewDialer(cfg ClientConfig) (*Dialer, error) {
	if err := cfg.check(); err != nil {
		return nil, err
	}
	if cfg.ListenPacket == nil {
		cfg.ListenPacket = func(ctx context.Context) (net.PacketConn, error) {
			var lc net.ListenConfig
			return lc.ListenPacket(ctx, "udp", ":0")
		}
	}
	if cfg.Resolver == nil {
		cfg.Resolver = net.DefaultResolver
	}
	if cfg.KeepAlive <= 0 {
		cfg.KeepAlive = 15 * time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	d := &Dialer{cfg: cfg, log: log}
	if cfg.AuthKey != nil {
		k, err := ecdh.X25519().NewPublicKey(cfg.AuthKey)
		if err != nil {
			return nil, fmt.Errorf("quiccarrier: ClientConfig.AuthKey: %w", err)
		}
		d.authKey = k
	}
	return d, nil
}

// Carrier returns "quic".
func (d *Dialer) Carrier() string { return "quic" }

func (d *Dialer) resolve(ctx context.Context) (*net.UDPAddr, error) {
	host, port, err := net.SplitHostPort(d.cfg.Addr)
	if err != nil {
		return nil, err
	}
	ap, err := netip.ParseAddrPort(net.JoinHostPort(host, port))
	if err == nil {
		return net.UDPAddrFromAddrPort(ap), nil
	}
	ips, err := d.cfg.Resolver.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return nil, err
	}
	if len(ips) == 0 {
		return nil, fmt.Errorf("no address for %s", host)
	}
	return net.ResolveUDPAddr("udp", net.JoinHostPort(ips[0].Unmap().String(), port))
}

// Dial performs the QUIC handshake with the Chrome hello, checks the
// relay's pin and returns a session. It sends nothing else: the token goes
// with the first stream.
func (d *Dialer) Dial(ctx context.Context) (transport.Session, error) {
	raddr, err := d.resolve(ctx)
	if err != nil {
		return nil, fmt.Errorf("resolve relay %s: %w", d.cfg.Addr, err)
	}
	pc, err := d.cfg.ListenPacket(ctx)
	if err != nil {
		return nil, fmt.Errorf("udp socket: %w", err)
	}
	// Chrome sends a zero-length source connection ID; with it a
	// Transport carries one connection, so each session has its own.
	tr := &quic.Transport{Conn: pc, ConnectionIDGenerator: quic.ZeroLengthConnectionIDGenerator{}}
	pin := d.cfg.Pin
	var pinFailed atomic.Bool
	// The hello's random proves the key to the relay's front door; the
	// parrot's TLS stack reads it first of all its randomness.
	random, err := NewRandom(d.cfg.Key, d.cfg.Now())
	if err != nil {
		tr.Close()
		pc.Close()
		return nil, fmt.Errorf("token: %w", err)
	}
	tlsConf := &tls.Config{
		Rand:       io.MultiReader(bytes.NewReader(random[:]), rand.Reader),
		ServerName: d.cfg.ServerName,
		NextProtos: []string{http3.NextProtoH3},
		// The relay's certificate is self-made; it is checked by its pin
		// instead of by a CA.
		InsecureSkipVerify: true,
		VerifyPeerCertificate: func(rawCerts [][]byte, _ [][]*x509.Certificate) error {
			err := auth.CheckPin(rawCerts, pin)
			pinFailed.Store(err != nil)
			return err
		},
	}
	var sealed func(*ecdh.PrivateKey) ([32]byte, error)
	if d.authKey != nil {
		// The random is sealed under the hello's own key share, once the
		// parrot has made it (the random read from Rand is replaced).
		key, now, relay := d.cfg.Key, d.cfg.Now(), d.authKey
		sealed = func(share *ecdh.PrivateKey) ([32]byte, error) {
			r, err := NewSealedRandom(key, now, share, relay)
			random = r // the hello's, for the takeover tag
			return r, err
		}
	}
	qconf := &quic.Config{
		ChromeParrot: true,
		// Chromium's QUIC hello carries the same 0xca34 body as its TLS one.
		ChromeTrustAnchorIDs: tlscarrier.ChromeTrustAnchorIDs(),
		KeepAlivePeriod:      d.cfg.KeepAlive,
		ChromeClientRandom:   sealed,
		// Chromium sends no datagram above its 1250 bytes (1230 over
		// IPv6); quic-go's path MTU probes, 1341 to 1447 bytes right after
		// the handshake, would show a client that is not Chromium.
		DisablePathMTUDiscovery: true,
	}
	conn, err := tr.Dial(ctx, raddr, tlsConf, qconf)
	if err != nil {
		tr.Close()
		pc.Close()
		if pinFailed.Load() {
			// The relay's front door sends a hello whose random it does
			// not accept to its cover site, whose certificate is not the
			// pinned one: to this client a refused key looks like a
			// wrong certificate (and so does an interceptor's).
			return nil, fmt.Errorf("quic handshake with relay %s: %w: %w: %w", d.cfg.Addr, transport.ErrKeyRefused, auth.ErrPin, err)
		}
		return nil, fmt.Errorf("quic handshake with relay %s: %w", d.cfg.Addr, err)
	}
	s := &session{
		conn: conn,
		h3:   chromeH3().NewClientConn(conn),
		url:  &url.URL{Scheme: "https", Host: d.cfg.ServerName, Path: "/"},
		// The relay answers a stream it takes over with the tag of the
		// hello's random, which the front door let in.
		tag: takeoverTag(random[:RandomNonceSize]),
		// What Chromium sends with a page request: requests are
		// encrypted, but their size shows.
		header: chromeRequestHeader(),
	}
	if d.authKey == nil {
		// A relay from before the front door knew keys from the hello
		// alone: an Authorization token too, whose nonce names the tag.
		authz, err := newAuthorization(d.cfg.Key, d.cfg.Now())
		if err != nil {
			conn.CloseWithError(errNoError, "")
			tr.Close()
			pc.Close()
			return nil, fmt.Errorf("token: %w", err)
		}
		nonce, _, _ := ParseAuthorization(authz)
		s.header = http.Header{"Authorization": {authz}}
		s.tag = takeoverTag(nonce)
	}
	go func() {
		<-conn.Context().Done()
		tr.Close()
		pc.Close()
	}()
	d.log.Debug("session up", "transport", "quic", "relay", d.cfg.Addr)
	return s, nil
}

// session is the client side of one QUIC connection.
type session struct {
	conn   *quic.Conn
	h3     *http3.ClientConn
	header http.Header // every request's
	tag    string      // the relay's takeover tag
	url    *url.URL

	// What Ping goes by: the count of packets received when the latest
	// stream was opened, when that was (Unix nanoseconds), and how many
	// OpenStream calls wait for the relay to raise its stream limit.
	opened   atomic.Uint64
	openedAt atomic.Int64
	waiting  atomic.Int32
	// open counts the streams open now: a session that ends with none
	// open ended as Chromium's idle connections do.
	open atomic.Int32
}

const (
	// pingPoll is how often Ping looks at the connection's packet count.
	pingPoll = 5 * time.Millisecond
	// openFresh is how long after a stream open Ping counts packets
	// received since that open; later it waits for a packet after its
	// own start.
	openFresh = 5 * time.Second
)

// RTT returns the connection's smoothed round-trip time, without waiting.
func (s *session) RTT() time.Duration { return s.conn.ConnectionStats().SmoothedRTT }

// Ping checks that the relay still answers and returns QUIC's smoothed
// round-trip time (RFC 9002 section 5.3). It implements
// [transport.Session.Ping] without sending anything: HTTP/3 has no PING of
// its own, and a request stream would compete with the streams for the
// relay's stream limit. Instead it waits for a packet from the relay
// received after the latest stream was opened, if that was less than
// openFresh ago, or else after Ping began. A live relay sends one at once:
// it acknowledges a new stream's first bytes within its ack delay, and data
// in flight; on an idle session the answer is that to QUIC's keep-alive,
// up to [ClientConfig.KeepAlive] away.
//
// While a stream open waits for the relay to raise its stream limit, the
// latest open counts however old it is: that wait is the relay's doing,
// not a sign it is gone, and the waiting stream sends nothing the relay
// could acknowledge. (QUIC's idle timeout still ends a session whose relay
// went silent.)
func (s *session) Ping(ctx context.Context) (time.Duration, error) {
	if s.conn.Context().Err() != nil {
		return 0, fmt.Errorf("ping: %w", net.ErrClosed)
	}
	mark := s.conn.ConnectionStats().PacketsReceived
	if s.waiting.Load() > 0 || time.Since(time.Unix(0, s.openedAt.Load())) < openFresh {
		mark = min(mark, s.opened.Load())
	}
	var tick *time.Ticker
	for {
		st := s.conn.ConnectionStats()
		if st.PacketsReceived > mark {
			return st.SmoothedRTT, nil
		}
		if tick == nil {
			tick = time.NewTicker(pingPoll)
			defer tick.Stop()
		}
		select {
		case <-tick.C:
		case <-s.conn.Context().Done():
			return 0, fmt.Errorf("ping: %w", net.ErrClosed)
		case <-ctx.Done():
			return 0, fmt.Errorf("ping: no packet from the relay: %w", ctx.Err())
		}
	}
}

func (s *session) OpenStream(ctx context.Context) (transport.Stream, error) {
	if s.conn.Context().Err() != nil {
		return nil, fmt.Errorf("quic session: %w", net.ErrClosed)
	}
	// At the relay's stream limit this waits for the relay to raise it.
	s.waiting.Add(1)
	rs, err := s.h3.OpenRequestStream(ctx)
	if err == nil {
		// The mark for Ping: the relay acknowledges what this stream
		// sends next.
		s.opened.Store(s.conn.ConnectionStats().PacketsReceived)
		s.openedAt.Store(time.Now().UnixNano())
	}
	s.waiting.Add(-1)
	if err != nil {
		if s.conn.Context().Err() != nil {
			return nil, fmt.Errorf("open stream: %w: %w", net.ErrClosed, err)
		}
		return nil, fmt.Errorf("open stream: %w", err)
	}
	req := &http.Request{
		Method: http.MethodPost,
		URL:    s.url,
		Host:   s.url.Host,
		Header: s.header.Clone(),
		// A body of unknown length: no content-length header, DATA
		// frames until FIN.
		Body:          http.NoBody,
		ContentLength: -1,
	}
	if err := rs.SendRequestHeader(req); err != nil {
		rs.CancelWrite(errRequestCancelled)
		rs.CancelRead(errRequestCancelled)
		return nil, fmt.Errorf("send request header: %w", err)
	}
	st := newStream()
	st.r, st.w, st.finish = rs, rs, rs.Close
	st.cancelRead = func() { rs.CancelRead(errRequestCancelled) }
	st.cancelWrite = func() { rs.CancelWrite(errRequestCancelled) }
	st.setWD = rs.SetWriteDeadline
	st.local, st.remote = s.conn.LocalAddr(), s.conn.RemoteAddr()
	// The response header is read first, by the stream's reader, so
	// that no read deadline cuts it in half.
	st.first = func() error { return readResponse(rs, s.tag) }
	s.open.Add(1)
	st.onClose = func() { s.open.Add(-1) }
	st.start()
	return st, nil
}

// readResponse reads the relay's answer to a stream's request: a 200 with
// the takeover tag of the session's token means the relay took the stream
// over; anything else came from the cover site, which is where the relay
// sends a token it does not accept.
func readResponse(rs *http3.RequestStream, tag string) error {
	resp, err := rs.ReadResponse()
	if err != nil {
		return fmt.Errorf("read response header: %w", err)
	}
	if resp.StatusCode != http.StatusOK || resp.Header.Get(tagHeader) != tag {
		return fmt.Errorf("%w: HTTP %d: %w", ErrRefused, resp.StatusCode, transport.ErrKeyRefused)
	}
	return nil
}

func (s *session) Done() <-chan struct{} { return s.conn.Context().Done() }

// Err returns why the session ended, nil while it is up. A session that
// ended with no stream open, at its idle timeout or closed by the relay
// without error, ended as Chromium's idle connections do (the client
// pings only while streams are open): that wraps
// [transport.ErrOrderlyClose].
func (s *session) Err() error {
	if s.conn.Context().Err() == nil {
		return nil
	}
	err := context.Cause(s.conn.Context())
	if s.open.Load() > 0 {
		return err
	}
	var idle *quic.IdleTimeoutError
	var app *quic.ApplicationError
	if errors.As(err, &idle) || errors.As(err, &app) && app.Remote && app.ErrorCode == errNoError {
		// Silent, or closed by the relay (H3_NO_ERROR) as an HTTP/3
		// server closes an idle connection.
		return fmt.Errorf("%w: %w", transport.ErrOrderlyClose, err)
	}
	return err
}

func (s *session) Close() error {
	return s.conn.CloseWithError(errNoError, "")
}

// HTTP/3 and QPACK settings (RFC 9114 section 7.2.4.1, RFC 9204 section 5,
// RFC 9297 section 2.1.1) that Chromium 156 sends.
const (
	settingQPACKMaxTableCapacity = 0x1
	settingMaxFieldSectionSize   = 0x6
	settingQPACKBlockedStreams   = 0x7
	settingH3Datagram            = 0x33

	chromeMaxFieldSectionSize = 262144
)

// chromeH3 returns an HTTP/3 client whose control stream is Chromium 156's
// (measured by TestChromiumQUICInitialLayout): SETTINGS with
// QPACK_MAX_TABLE_CAPACITY 65536, MAX_FIELD_SECTION_SIZE 262144,
// QPACK_BLOCKED_STREAMS 100 and H3_DATAGRAM 1 in this order, then a GREASE
// setting, then a GREASE frame; and, in the packet with each request's
// HEADERS, a PRIORITY_UPDATE frame with its Priority field ("u=0, i",
// chromeRequestHeader). The relay's quic-go server, like Caddy's, takes no
// harm from them (TestChromeSettingsAccepted): its QPACK encoder (quic-go's
// qpack) never uses the dynamic table, so the capacity offered goes unused;
// it reads H3_DATAGRAM=1 without error with its datagrams off (with them
// on, the parrot's transport parameters offer QUIC datagrams); it skips
// unknown frame types; and a PRIORITY_UPDATE sets what the request's
// Priority field already set.
func chromeH3() *http3.Transport {
	return &http3.Transport{
		Settings: []http3.Setting{
			{ID: settingQPACKMaxTableCapacity, Value: 65536},
			{ID: settingMaxFieldSectionSize, Value: chromeMaxFieldSectionSize},
			{ID: settingQPACKBlockedStreams, Value: 100},
			{ID: settingH3Datagram, Value: 1},
		},
		Grease:         true,
		PriorityUpdate: true,
		// What the SETTINGS advertise is what the client accepts.
		MaxResponseHeaderBytes: chromeMaxFieldSectionSize,
	}
}

// chromeRequestHeader returns the header fields Chromium 156 on Linux sends
// with a page request, so that a stream's HEADERS frame has the size of
// one (the pseudo-header fields come from the request itself).
// TestChromiumQUICInitialLayout checks that size against Debian's chromium
// 156.0.8078.108, whose fields these are (headless, its User-Agent says
// HeadlessChrome).
func chromeRequestHeader() http.Header {
	h := http.Header{}
	for _, f := range tlscarrier.ChromePageHeaders() {
		h.Add(f[0], f[1])
	}
	return h
}
