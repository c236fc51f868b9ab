package tlscarrier

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/merpati/merpati/transport"
	"github.com/merpati/merpati/transport/auth"
	"github.com/merpati/merpati/transport/h2mux"
	"github.com/merpati/merpati/transport/hello"
)

// ServerConfig configures the relay side of the carrier.
type ServerConfig struct {
	// Certificate is the relay's own certificate, whose key clients pin.
	// Required.
	Certificate tls.Certificate
	// Mux configures the HTTP/2 session.
	Mux h2mux.Config
	// HandshakeTimeout bounds the TLS handshake; zero means 10 seconds.
	HandshakeTimeout time.Duration
	// Mirror, if not nil, shapes the flight like the cover site's.
	Mirror *Mirror
}

// HelloToken returns the digest of h (with its session id zeroed) and the
// token in its session id, for [auth.Match]. ok is false when h cannot
// carry a token: its session id is not 32 bytes long.
func HelloToken(h *hello.ClientHello) (digest [32]byte, token []byte, ok bool) {
	if len(h.SessionID) != auth.TokenSize || h.SessionIDOffset != sessionIDOffset {
		return digest, nil, false
	}
	digest, err := auth.HelloDigest(h.Raw, h.SessionIDOffset)
	if err != nil {
		return digest, nil, false
	}
	return digest, h.SessionID, true
}

// Accept completes the relay side of an authenticated connection: conn is
// the client's connection, of which the bytes in read (the TLS record
// holding the ClientHello, and whatever followed it) have already been
// read. The caller has already checked the
// hello's token. Accept runs the TLS handshake, requires ALPN "h2", and
// starts the HTTP/2 session. On error the caller closes conn.
func Accept(ctx context.Context, conn net.Conn, read []byte, cfg ServerConfig) (*h2mux.Session, error) {
	if len(cfg.Certificate.Certificate) == 0 {
		return nil, errors.New("tlscarrier: ServerConfig.Certificate: required")
	}
	timeout := cfg.HandshakeTimeout
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	// The session's read loop wakes its streams' readers once the
	// socket is drained (see transport.WaitConn); it finds the socket
	// under TLS, prefixConn and admittedConn.
	if a, ok := conn.(*admittedConn); ok {
		a.Conn = transport.NewWaitConn(a.Conn)
	} else {
		conn = transport.NewWaitConn(conn)
	}
	pc := &prefixConn{Conn: conn, prefix: read}
	tc := tls.Server(pc, serverTLSConfig(&cfg))
	hctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := tc.HandshakeContext(hctx); err != nil {
		return nil, fmt.Errorf("tls handshake: %w", err)
	}
	if p := tc.ConnectionState().NegotiatedProtocol; p != "h2" {
		return nil, fmt.Errorf("client negotiated ALPN %q, want h2", p)
	}
	// What the relay sends now (tickets, SETTINGS) leaves in one write,
	// as a web server's does.
	pc.cork()
	if cfg.Mirror != nil {
		// The cover site's session tickets after the client's Finished:
		// records of their sizes, which the client's HTTP/2 layer
		// ignores.
		for _, n := range cfg.Mirror.lateTickets() {
			if f, ok := fillerFrame(n); ok {
				if _, err := tc.Write(f); err != nil {
					return nil, fmt.Errorf("tls: %w", err)
				}
			}
		}
	}
	mux := cfg.Mux
	mux.PrefaceNow = true
	s, err := h2mux.Server(tc, mux)
	if err != nil {
		return nil, fmt.Errorf("http/2 session: %w", err)
	}
	if err := pc.uncork(); err != nil {
		s.Close()
		return nil, fmt.Errorf("tls: %w", err)
	}
	return s, nil
}

// lastServerConf holds the TLS config of the latest certificate and
// mirrored flight. Every handshake with them shares it, as a server's
// handshakes share one config: the config's slices and crypto/tls's
// session ticket keys are made once, not once per session.
var lastServerConf atomic.Pointer[serverConf]

type serverConf struct {
	leaf *[]byte      // the certificate, told by its chain's array
	st   *mirrorState // nil without a mirror or a learned flight
	conf *tls.Config
}

// serverTLSConfig returns the TLS config for a handshake with cfg.
func serverTLSConfig(cfg *ServerConfig) *tls.Config {
	var st *mirrorState
	if cfg.Mirror != nil {
		st = cfg.Mirror.cur.Load()
	}
	leaf := &cfg.Certificate.Certificate[0]
	if c := lastServerConf.Load(); c != nil && c.leaf == leaf && c.st == st {
		return c.conf
	}
	conf := &tls.Config{
		Certificates: []tls.Certificate{cfg.Certificate},
		NextProtos:   []string{"h2", "http/1.1"},
		MinVersion:   tls.VersionTLS13,
	}
	if st != nil {
		st.serverConfig(conf)
	}
	lastServerConf.Store(&serverConf{leaf: leaf, st: st, conf: conf})
	return conf
}

// prefixConn reads prefix before reading from Conn. While corked, what
// is written to it waits in a buffer, to be written at once by uncork.
type prefixConn struct {
	net.Conn
	prefix []byte

	wmu    sync.Mutex
	corked bool
	wbuf   []byte
}

func (c *prefixConn) cork() {
	c.wmu.Lock()
	c.corked = true
	c.wmu.Unlock()
}

// uncork writes what was written since cork, and lets writes through.
func (c *prefixConn) uncork() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.corked = false
	b := c.wbuf
	c.wbuf = nil
	if len(b) == 0 {
		return nil
	}
	_, err := c.Conn.Write(b)
	return err
}

func (c *prefixConn) Write(b []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.corked {
		c.wbuf = append(c.wbuf, b...)
		return len(b), nil
	}
	return c.Conn.Write(b)
}

// NetConn returns the connection under c.
func (c *prefixConn) NetConn() net.Conn { return c.Conn }

func (c *prefixConn) Read(b []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(b, c.prefix)
		if c.prefix = c.prefix[n:]; len(c.prefix) == 0 {
			c.prefix = nil // let the hello's bytes go
		}
		return n, nil
	}
	return c.Conn.Read(b)
}
