package quiccarrier

import (
	"context"
	"crypto/subtle"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"

	"github.com/merpati/merpati/transport"
)

// ServerConfig configures the relay side of the carrier.
type ServerConfig struct {
	// Certificate is the relay's certificate, the one the TLS carrier
	// uses; clients pin its key. Required.
	Certificate tls.Certificate
	// Cover serves every request that does not carry a valid token,
	// normally a reverse proxy to the cover site. Required.
	Cover http.Handler
	// Authenticate checks the first token a connection presents, with
	// digest = [Digest](nonce). It returns the authenticated peer (passed
	// on to ServeStream) and true, or false to send the request to Cover.
	// It is called at most once per connection and token; ctx is done
	// when the connection ends, and conn closes the connection (for
	// revoking a key). Required.
	Authenticate func(ctx context.Context, digest [32]byte, token []byte, conn io.Closer) (peer any, ok bool)
	// ServeStream serves one authenticated stream; the stream is closed
	// when it returns. ctx is done when the connection or the server
	// ends. Required.
	ServeStream func(ctx context.Context, st transport.Stream, peer any)
	// IdleTimeout closes connections idle this long; zero means 60
	// seconds (clients keep theirs alive with PINGs).
	IdleTimeout time.Duration
	// MaxStreams is how many streams one connection may have open at
	// once (QUIC's MAX_STREAMS for bidirectional streams, RFC 9000
	// section 4.6); zero means [DefaultMaxStreams]. A client at the limit
	// waits for a stream to end.
	MaxStreams int
	// Logger receives debug messages; nil discards.
	Logger *slog.Logger
}

// DefaultMaxStreams is the default [ServerConfig.MaxStreams]: 4096
// concurrent streams per connection. quic-go's own default, 100, is a
// browser's budget for one site; one merpati client carries every Telegram
// connection of its user's apps (and of anyone sharing its SOCKS5 front),
// and the 101st would wait for one of them to end. 4096 is four times the
// TLS carrier's h2mux default, and far above what Telegram apps open; what
// one key may hold in total is for the relay's per-key limits to bound.
const DefaultMaxStreams = 4096

// A Server is the relay side of the QUIC carrier: an HTTP/3 server. Create
// one with [NewServer] and run it with [Server.Serve].
type Server struct {
	cfg ServerConfig
	log *slog.Logger
}

// NewServer checks cfg and returns a Server.
func NewServer(cfg ServerConfig) (*Server, error) {
	switch {
	case len(cfg.Certificate.Certificate) == 0:
		return nil, errors.New("quiccarrier: ServerConfig.Certificate: required")
	case cfg.Cover == nil:
		return nil, errors.New("quiccarrier: ServerConfig.Cover: required")
	case cfg.Authenticate == nil:
		return nil, errors.New("quiccarrier: ServerConfig.Authenticate: required")
	case cfg.ServeStream == nil:
		return nil, errors.New("quiccarrier: ServerConfig.ServeStream: required")
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = 60 * time.Second
	}
	if cfg.MaxStreams <= 0 {
		cfg.MaxStreams = DefaultMaxStreams
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Server{cfg: cfg, log: log}, nil
}

type connKey struct{}

// connState is what the server knows about one QUIC connection.
type connState struct {
	ctx  context.Context // done when the connection or the server ends
	conn *quic.Conn

	mu    sync.Mutex
	authz []byte // the accepted nonce||token, once one is
	peer  any
}

func (c *connState) Close() error { return c.conn.CloseWithError(errNoError, "") }

// Serve serves HTTP/3 on pc until ctx is done or pc fails, and closes pc.
// When ctx is done it closes every connection and returns nil once every
// stream handler has returned.
func (s *Server) Serve(ctx context.Context, pc net.PacketConn) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	tr := &quic.Transport{Conn: pc}
	defer pc.Close()
	defer tr.Close()
	tlsConf := http3.ConfigureTLSConfig(&tls.Config{
		Certificates: []tls.Certificate{s.cfg.Certificate},
		MinVersion:   tls.VersionTLS13,
	})
	ln, err := tr.ListenEarly(tlsConf, &quic.Config{
		MaxIdleTimeout:     s.cfg.IdleTimeout,
		MaxIncomingStreams: int64(s.cfg.MaxStreams),
		Allow0RTT:          false,
	})
	if err != nil {
		return fmt.Errorf("quiccarrier: listen: %w", err)
	}
	// handlers counts running handlers; once closing is set no new one
	// starts, so that Wait below cannot race with Add.
	var (
		mu       sync.Mutex
		closing  bool
		handlers sync.WaitGroup
	)
	waitHandlers := func() {
		mu.Lock()
		closing = true
		mu.Unlock()
		handlers.Wait()
	}
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
			s.serveHTTP(w, r)
		}),
		ConnContext: func(cctx context.Context, c *quic.Conn) context.Context {
			sctx, scancel := context.WithCancel(ctx)
			context.AfterFunc(c.Context(), scancel)
			return context.WithValue(cctx, connKey{}, &connState{ctx: sctx, conn: c})
		},
		IdleTimeout: s.cfg.IdleTimeout,
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.ServeListener(ln) }()
	select {
	case <-ctx.Done():
		srv.Close()
		<-errc
		waitHandlers()
		return nil
	case err := <-errc:
		srv.Close()
		waitHandlers()
		if ctx.Err() != nil || errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return fmt.Errorf("quiccarrier: serve: %w", err)
	}
}

// serveHTTP takes over a request with a valid token and hands every other
// request to the cover site.
func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	cs, _ := r.Context().Value(connKey{}).(*connState)
	streamer, ok := w.(http3.HTTPStreamer)
	if cs == nil || !ok {
		s.cfg.Cover.ServeHTTP(w, r)
		return
	}
	peer, ok := s.authenticate(cs, r.Header.Get("Authorization"))
	if !ok {
		s.cfg.Cover.ServeHTTP(w, r)
		return
	}
	w.WriteHeader(http.StatusOK)
	str, err := streamer.HTTPStream()
	if err != nil {
		s.log.Debug("take over stream", "transport", "quic", "err", err)
		return
	}
	st := &serverStream{str: str, conn: cs.conn}
	defer st.Close()
	s.cfg.ServeStream(cs.ctx, st, peer)
}

func (s *Server) authenticate(cs *connState, header string) (any, bool) {
	if header == "" {
		return nil, false
	}
	nonce, token, err := ParseAuthorization(header)
	if err != nil {
		return nil, false
	}
	cs.mu.Lock()
	defer cs.mu.Unlock()
	raw := append(append([]byte(nil), nonce...), token...)
	if cs.authz != nil {
		// Every stream of a connection carries the token that
		// authenticated it.
		if subtle.ConstantTimeCompare(cs.authz, raw) == 1 {
			return cs.peer, true
		}
		return nil, false
	}
	peer, ok := s.cfg.Authenticate(cs.ctx, Digest(nonce), token, cs)
	if !ok {
		return nil, false
	}
	cs.authz, cs.peer = raw, peer
	return peer, true
}

// serverStream is a taken-over request stream.
type serverStream struct {
	str  *http3.Stream
	conn *quic.Conn
}

func (c *serverStream) Read(b []byte) (int, error)  { return c.str.Read(b) }
func (c *serverStream) Write(b []byte) (int, error) { return c.str.Write(b) }
func (c *serverStream) CloseWrite() error           { return c.str.Close() }

func (c *serverStream) Close() error {
	err := c.str.Close()
	c.str.CancelRead(errRequestCancelled)
	return err
}

func (c *serverStream) LocalAddr() net.Addr                { return c.conn.LocalAddr() }
func (c *serverStream) RemoteAddr() net.Addr               { return c.conn.RemoteAddr() }
func (c *serverStream) SetDeadline(t time.Time) error      { return c.str.SetDeadline(t) }
func (c *serverStream) SetReadDeadline(t time.Time) error  { return c.str.SetReadDeadline(t) }
func (c *serverStream) SetWriteDeadline(t time.Time) error { return c.str.SetWriteDeadline(t) }
