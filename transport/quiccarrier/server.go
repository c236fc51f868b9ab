package quiccarrier

import (
	"context"
	"crypto/subtle"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"

	"github.com/merpati/merpati/transport"
	"github.com/merpati/merpati/transport/tlscarrier"
)

// ListenConfig configures the relay side of the carrier.
type ListenConfig struct {
	// Certificate is the relay's certificate, the one the TLS carrier
	// uses; clients pin its key. Required.
	Certificate tls.Certificate
	// Auth judges the short token in each client's first Initial (see
	// [RandomProof]) and the first token each connection presents in its
	// requests, with digest = [Digest](nonce). Required.
	Auth transport.Authenticator
	// Cover is the cover site's UDP address, "host:port": every client
	// whose first Initial does not carry a key holder's token talks QUIC
	// with it, through the relay's port. Required. A cover site without
	// HTTP/3 has no UDP service to show; then run no QUIC carrier at all
	// (see [CheckCover]).
	Cover string
	// DialCover, if not nil, opens each client's socket to the cover site
	// in place of a UDP socket connected to Cover, so that the cover site
	// can change while the listener runs (a relay's settings reloaded).
	// It should return a connected *net.UDPConn, whose reads report the
	// cover's ICMP port unreachable. It must be safe for concurrent use.
	DialCover func() (net.Conn, error)
	// ConnIDLen is the length of the relay's connection IDs, which
	// observers see in its long header packets: the cover site's, when
	// known ([CoverInfo.ConnIDLen]); zero means [DefaultConnIDLen].
	ConnIDLen int
	// MaxUnauthFlows and MaxUnauthPerSource cap the client addresses the
	// front door relays to the cover site or is still judging, in all
	// and per source network; datagrams of new addresses over the caps
	// are dropped. Zero means [DefaultMaxUnauthFlows] and
	// [DefaultMaxUnauthPerSource]. MaxUnauthFlows also caps the key
	// holders' addresses that arrived by connection ID, from a new
	// address (RFC 9000 section 9), whose hello the door did not see.
	MaxUnauthFlows, MaxUnauthPerSource int
	// FlowIdle ends a client address's flow after this long without a
	// datagram either way; zero means [DefaultFlowIdle].
	FlowIdle time.Duration
	// IdleTimeout closes connections idle this long; zero means 60
	// seconds.
	IdleTimeout time.Duration
	// MaxStreams is how many streams one connection may have open at
	// once (QUIC's MAX_STREAMS for bidirectional streams, RFC 9000
	// section 4.6); zero means [DefaultMaxStreams]. A client at the limit
	// waits for a stream to end.
	MaxStreams int
	// Mirror, if not nil, gives key holders' handshakes the cover site's
	// certificate chain shape and key share group, so that the sizes of
	// the relay's handshake datagrams follow the cover's.
	Mirror *tlscarrier.Mirror
	// Logger receives debug messages; nil discards.
	Logger *slog.Logger
}

// DefaultMaxStreams is the default [ListenConfig.MaxStreams]: 4096
// concurrent streams per connection. quic-go's own default, 100, is a
// browser's budget for one site; one merpati client carries every Telegram
// connection of its user's apps (and of anyone sharing its SOCKS5 front),
// and the 101st would wait for one of them to end. 4096 is four times the
// TLS carrier's h2mux default, and far above what Telegram apps open; what
// one key may hold in total is for the relay's per-key limits to bound.
const DefaultMaxStreams = 4096

// A Listener is the relay side of the carrier: a front door on the UDP
// socket that sends every client without a key holder's token in its
// first Initial to the cover site's own UDP port, so that a prober talks
// QUIC and HTTP/3 with the cover site itself, and behind it an HTTP/3
// server for key holders, each of whose connections is a session (yielded
// by Accept) and each of whose requests carrying the connection's token is
// one of its streams. It implements [transport.Listener]. Create one with
// [Listen].
type Listener struct {
	cfg  ListenConfig
	log  *slog.Logger
	pc   net.PacketConn
	door *frontDoor // pc

	sessions chan *serverSession
	ctx      context.Context // done when the listener closes
	cancel   context.CancelFunc
	done     chan struct{} // closed when serving has stopped
	err      error         // why, set before done is closed
}

var _ transport.Listener = (*Listener)(nil)

// Listen starts the carrier on pc, which the listener then owns.
func Listen(pc net.PacketConn, cfg ListenConfig) (*Listener, error) {
	switch {
	case len(cfg.Certificate.Certificate) == 0:
		return nil, errors.New("quiccarrier: ListenConfig.Certificate: required")
	case cfg.Auth == nil:
		return nil, errors.New("quiccarrier: ListenConfig.Auth: required")
	case cfg.Cover == "":
		return nil, errors.New("quiccarrier: ListenConfig.Cover: required")
	}
	cover, err := net.ResolveUDPAddr("udp", cfg.Cover)
	if err != nil {
		return nil, fmt.Errorf("quiccarrier: ListenConfig.Cover: %w", err)
	}
	if cfg.ConnIDLen == 0 {
		cfg.ConnIDLen = DefaultConnIDLen
	}
	if cfg.MaxUnauthFlows <= 0 {
		cfg.MaxUnauthFlows = DefaultMaxUnauthFlows
	}
	if cfg.MaxUnauthPerSource <= 0 {
		cfg.MaxUnauthPerSource = DefaultMaxUnauthPerSource
	}
	if cfg.FlowIdle <= 0 {
		cfg.FlowIdle = DefaultFlowIdle
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = 60 * time.Second
	}
	// An ID stays reserved as long as a flow or a connection lasts
	// without a datagram: past that, the connection that used it has
	// ended.
	cids, err := newCIDGen(cfg.ConnIDLen, max(cfg.FlowIdle, cfg.IdleTimeout))
	if err != nil {
		return nil, fmt.Errorf("quiccarrier: ListenConfig.ConnIDLen: %w", err)
	}
	if cfg.MaxStreams <= 0 {
		cfg.MaxStreams = DefaultMaxStreams
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("transport", "quic")
	door := newFrontDoor(pc, cover, cfg.Auth, cids, cfg.MaxUnauthFlows, cfg.MaxUnauthPerSource, cfg.FlowIdle, log)
	if cfg.DialCover != nil {
		door.mu.Lock() // toCover reads it under mu
		door.dialCover = cfg.DialCover
		door.mu.Unlock()
	}
	tr := &quic.Transport{Conn: door, ConnectionIDGenerator: cids}
	tlsConf := http3.ConfigureTLSConfig(&tls.Config{
		Certificates: []tls.Certificate{cfg.Certificate},
		MinVersion:   tls.VersionTLS13,
	})
	if m := cfg.Mirror; m != nil {
		base := tlsConf
		tlsConf = base.Clone()
		tlsConf.GetConfigForClient = func(chi *tls.ClientHelloInfo) (*tls.Config, error) {
			// http3's own, if it has one, then the cover's shape.
			c := base.Clone()
			if base.GetConfigForClient != nil {
				inner, err := base.GetConfigForClient(chi)
				if err != nil {
					return nil, err
				}
				if inner != nil {
					c = inner
				}
			}
			m.ApplyHandshake(c)
			return c, nil
		}
	}
	ln, err := tr.ListenEarly(tlsConf, &quic.Config{
		MaxIdleTimeout:     cfg.IdleTimeout,
		MaxIncomingStreams: int64(cfg.MaxStreams),
		Allow0RTT:          false,
	})
	if err != nil {
		tr.Close()
		door.Close()
		return nil, fmt.Errorf("quiccarrier: listen: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	l := &Listener{
		cfg: cfg, log: log, pc: door, door: door,
		sessions: make(chan *serverSession),
		ctx:      ctx, cancel: cancel,
		done: make(chan struct{}),
	}
	go l.serve(tr, ln)
	return l, nil
}

// serve runs the HTTP/3 server until the listener closes or pc fails.
func (l *Listener) serve(tr *quic.Transport, ln *quic.EarlyListener) {
	defer close(l.done)
	defer l.pc.Close()
	defer tr.Close()
	// handlers counts running handlers; once closing is set no new one
	// starts, so that Wait below cannot race with Add.
	var (
		mu       sync.Mutex
		closing  bool
		handlers sync.WaitGroup
	)
	srv := &http3.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			if closing {
				mu.Unlock()
				return
			}
			handlers.Add(1)
			mu.Unlock()
			defer handlers.Done()
			l.serveHTTP(w, r)
		}),
		ConnContext: func(cctx context.Context, c *quic.Conn) context.Context {
			sctx, scancel := context.WithCancel(l.ctx)
			context.AfterFunc(c.Context(), scancel)
			// The key the front door judged the connection's hello by.
			cs := &connState{ctx: sctx, conn: c}
			cs.key, cs.random = l.door.keyOf(c.RemoteAddr())
			return context.WithValue(cctx, connKey{}, cs)
		},
		IdleTimeout: l.cfg.IdleTimeout,
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.ServeListener(ln) }()
	var err error
	select {
	case <-l.ctx.Done():
	case err = <-errc:
	}
	l.cancel()
	srv.Close()
	if err == nil {
		<-errc
	}
	mu.Lock()
	closing = true
	mu.Unlock()
	handlers.Wait()
	if err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, quic.ErrServerClosed) {
		l.err = fmt.Errorf("quiccarrier: serve: %w", err)
	}
}

// Accept waits for the next authenticated connection.
func (l *Listener) Accept(ctx context.Context) (transport.ServerSession, error) {
	select {
	case s := <-l.sessions:
		return s, nil
	case <-l.ctx.Done():
		<-l.done
		if l.err != nil {
			return nil, l.err
		}
		return nil, fmt.Errorf("quiccarrier: accept: %w", net.ErrClosed)
	case <-ctx.Done():
		return nil, fmt.Errorf("quiccarrier: accept: %w", ctx.Err())
	}
}

// Close stops the server and closes every connection, accepted sessions
// included, and returns once every request handler has returned.
func (l *Listener) Close() error {
	l.cancel()
	<-l.done
	return nil
}

// Addr returns the listener's UDP address.
func (l *Listener) Addr() net.Addr { return l.pc.LocalAddr() }

type connKey struct{}

// connState is what the listener knows about one QUIC connection.
type connState struct {
	ctx  context.Context // done when the connection or the listener ends
	conn *quic.Conn
	// key is the key holder's whose hello the front door let in, random
	// that hello's; nil if not known (the first request's token then
	// decides).
	key    transport.Key
	random [32]byte

	mu    sync.Mutex
	authz []byte // the accepted nonce||token, once one is
	sess  *serverSession
}

// serveHTTP takes over a request with a valid token; a request without
// one, which only a key holder's connection can send (the front door
// sends everyone else to the cover site), is refused with 403. A
// taken-over request is one stream of its connection's session: the
// handler waits until the relay has closed it.
func (l *Listener) serveHTTP(w http.ResponseWriter, r *http.Request) {
	cs, _ := r.Context().Value(connKey{}).(*connState)
	streamer, ok := w.(http3.HTTPStreamer)
	var sess *serverSession
	first := false
	if cs != nil && ok {
		sess, first = l.authenticate(cs, r.Header.Get("Authorization"))
	}
	if sess == nil {
		w.WriteHeader(http.StatusForbidden)
		return
	}
	if first {
		select {
		case l.sessions <- sess:
		case <-cs.ctx.Done():
			return
		}
	}
	w.Header().Set(tagHeader, sess.tag)
	w.WriteHeader(http.StatusOK)
	str, err := streamer.HTTPStream()
	if err != nil {
		l.log.Debug("take over stream", "err", err)
		return
	}
	st := newStream()
	st.r, st.w, st.finish = str, str, str.Close
	st.cancelRead = func() { str.CancelRead(errRequestCancelled) }
	st.cancelWrite = func() { str.CancelWrite(errRequestCancelled) }
	st.setWD = str.SetWriteDeadline
	st.local, st.remote = cs.conn.LocalAddr(), cs.conn.RemoteAddr()
	// Upstream quic-go's HTTP/3 finishes a DATA frame that a write
	// deadline cut short.
	st.resumable = true
	st.start()
	select {
	case sess.streams <- st:
	case <-cs.ctx.Done():
		st.Close()
		return
	}
	select {
	case <-st.closed:
	case <-cs.ctx.Done():
		st.Close()
	}
}

// authenticate returns the session of cs if header carries its token, or
// makes it if this is the connection's first valid token (first is then
// true), or returns nil.
func (l *Listener) authenticate(cs *connState, header string) (sess *serverSession, first bool) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if header == "" {
		// A client whose hello named its key sends no token: its
		// streams ride on the hello, and the tag is the hello random's.
		if cs.key == nil {
			return nil, false
		}
		if cs.sess == nil {
			cs.sess = &serverSession{key: cs.key, conn: cs.conn, ctx: cs.ctx, tag: takeoverTag(cs.random[:RandomNonceSize]), streams: make(chan *stream)}
			return cs.sess, true
		}
		return cs.sess, false
	}
	nonce, token, err := ParseAuthorization(header)
	if err != nil {
		return nil, false
	}
	raw := append(append([]byte(nil), nonce...), token...)
	if cs.authz != nil {
		// Every stream of a connection carries the token that
		// authenticated it.
		if subtle.ConstantTimeCompare(cs.authz, raw) == 1 {
			return cs.sess, false
		}
		return nil, false
	}
	if cs.sess != nil {
		return nil, false // a connection of the hello's kind
	}
	// The hello's token (sealed, or plain from an older link) proved the
	// key already; an Authorization token is checked only where that is
	// not known.
	key := cs.key
	if key == nil {
		var err error
		if key, err = l.cfg.Auth.Authenticate(transport.Proof{Carrier: "quic", Digest: Digest(nonce), Token: token}); err != nil {
			l.log.Debug("request refused", "err", err)
			return nil, false
		}
	}
	cs.authz = raw
	cs.sess = &serverSession{key: key, conn: cs.conn, ctx: cs.ctx, tag: takeoverTag(nonce), streams: make(chan *stream)}
	return cs.sess, true
}

// serverSession is one authenticated QUIC connection.
type serverSession struct {
	key     transport.Key
	conn    *quic.Conn
	ctx     context.Context // done when the connection or the listener ends
	tag     string          // the takeover tag of the connection's token
	streams chan *stream
}

func (s *serverSession) AcceptStream(ctx context.Context) (transport.Stream, error) {
	select {
	case st := <-s.streams:
		return st, nil
	case <-s.ctx.Done():
		return nil, fmt.Errorf("quiccarrier: accept stream: %w", net.ErrClosed)
	case <-ctx.Done():
		return nil, fmt.Errorf("quiccarrier: accept stream: %w", ctx.Err())
	}
}

func (s *serverSession) Key() transport.Key    { return s.key }
func (s *serverSession) Carrier() string       { return "quic" }
func (s *serverSession) Done() <-chan struct{} { return s.ctx.Done() }

// Close closes the connection. Its request handlers, which the listener
// owns, return as soon as they notice.
func (s *serverSession) Close() error { return s.conn.CloseWithError(errNoError, "") }
