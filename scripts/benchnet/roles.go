package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"

	"github.com/merpati/merpati/transport/mtproxy"
)

// tunnelALPN is the ALPN of the plain TLS and QUIC tunnels.
const tunnelALPN = "benchnet"

// tunnelName is the server name of the plain tunnels' certificate.
const tunnelName = "tunnel.bench.test"

// serve accepts connections on ln and runs handle on each in a goroutine
// of its own until ctx is done, then closes ln and waits for the handlers.
func serve(ctx context.Context, ln net.Listener, handle func(net.Conn)) error {
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(5 * time.Millisecond)
				continue
			}
			return fmt.Errorf("accept: %w", err)
		}
		wg.Go(func() { handle(c) })
	}
}

func listenTCP(addr string, stdout io.Writer) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(stdout, "listening %s\n", ln.Addr())
	return ln, nil
}

// cmdDC is the fake datacenter.
func cmdDC(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("dc", stderr)
	listen := fs.String("listen", "127.0.0.1:0", "TCP address")
	obfs := fs.Bool("obfs", false, "accept an obfuscated2 init (no secret) first, as Telegram's datacenters do")
	bufSize := sizeValue(64 << 10)
	fs.Var(&bufSize, "buf", "read and write size")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ln, err := listenTCP(*listen, stdout)
	if err != nil {
		return fmt.Errorf("dc: %w", err)
	}
	src := packet(int(bufSize))
	return serve(ctx, ln, func(c net.Conn) { serveDC(c, *obfs, src) })
}

// serveDC serves one connection of the fake datacenter; src is a
// --buf-sized packet to send downloads from.
func serveDC(c net.Conn, obfs bool, src []byte) {
	defer c.Close()
	var rw io.ReadWriter = c
	if obfs {
		var init [mtproxy.InitLen]byte
		if _, err := io.ReadFull(c, init[:]); err != nil {
			return
		}
		_, ciph, err := mtproxy.AcceptInit(init, nil)
		if err != nil {
			return
		}
		rw = mtproxy.NewObfsConn(c, ciph)
	}
	h := make([]byte, headerLen)
	if _, err := io.ReadFull(rw, h); err != nil {
		return
	}
	mode, n := parseHeader(h)
	buf := make([]byte, len(src))
	switch mode {
	case modeDown:
		for n > 0 {
			p := src
			if n < int64(len(p)) {
				p = packet(max(int(n), 4))[:n]
			}
			if _, err := rw.Write(p); err != nil {
				return
			}
			n -= int64(len(p))
		}
		c.(*net.TCPConn).CloseWrite()
	case modeUp:
		for n > 0 {
			m, err := rw.Read(buf[:min(int64(len(buf)), n)])
			n -= int64(m)
			if err != nil {
				return
			}
		}
		if _, err := rw.Write(packet(ackLen)); err != nil {
			return
		}
	case modeEcho:
		if pump(rw, rw, buf) != nil {
			return
		}
		c.(*net.TCPConn).CloseWrite()
	default:
		return
	}
	// Wait for the app's end, so that closing here sends no reset.
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	for {
		if _, err := c.Read(buf); err != nil {
			return
		}
	}
}

// cmdCover is the relay's cover site: HTTPS on TCP and HTTP/3 on UDP at
// one port number (the relay serves its QUIC carrier only in front of a
// cover site that serves HTTP/3).
func cmdCover(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("cover", stderr)
	listen := fs.String("listen", "127.0.0.1:0", "TCP and UDP address")
	cert := fs.String("cert", "", "certificate PEM file (required)")
	key := fs.String("key", "", "key PEM file (required)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	conf, err := serverConfig(*cert, *key)
	if err != nil {
		return fmt.Errorf("cover: %w", err)
	}
	ln, pc, err := listenBoth(*listen)
	if err != nil {
		return fmt.Errorf("cover: %w", err)
	}
	page := "<html><body>An ordinary web site.</body></html>\n"
	altSvc := fmt.Sprintf(`h3=":%d"; ma=86400`, ln.Addr().(*net.TCPAddr).Port)
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ProtoMajor < 3 {
			w.Header().Set("Alt-Svc", altSvc)
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		io.WriteString(w, page)
	})
	quiet := slog.NewLogLogger(slog.DiscardHandler, slog.LevelError)
	// Idle connections close after nginx's default keepalive_timeout:
	// the relay learns the cover site's and closes idle sessions then.
	hs := &http.Server{Handler: handler, TLSConfig: conf.Clone(), ErrorLog: quiet, ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout: 75 * time.Second}
	hs.TLSConfig.NextProtos = []string{"h2", "http/1.1"}
	h3 := &http3.Server{Handler: handler, TLSConfig: http3.ConfigureTLSConfig(conf.Clone())}
	fmt.Fprintf(stdout, "listening %s\n", ln.Addr())
	errc := make(chan error, 2)
	go func() { errc <- hs.ServeTLS(ln, "", "") }()
	go func() { errc <- h3.Serve(pc) }()
	select {
	case <-ctx.Done():
		hs.Close()
		h3.Close()
		pc.Close()
		return nil
	case err := <-errc:
		return fmt.Errorf("cover: %w", err)
	}
}

// listenBoth listens on TCP and UDP at the same address; port 0 picks one
// free on both.
func listenBoth(addr string) (net.Listener, net.PacketConn, error) {
	for range 20 {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, nil, err
		}
		pc, err := net.ListenPacket("udp", ln.Addr().String())
		if err == nil {
			return ln, pc, nil
		}
		ln.Close()
		if !strings.HasSuffix(addr, ":0") {
			return nil, nil, err
		}
	}
	return nil, nil, fmt.Errorf("no port free on both TCP and UDP at %s", addr)
}

// cmdSplice is the one-hop TCP forwarder, the MTProxy direct mode's
// ceiling.
func cmdSplice(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("splice", stderr)
	listen := fs.String("listen", "127.0.0.1:0", "TCP address")
	to := fs.String("to", "", "address to forward to (required)")
	bufSize := sizeValue(64 << 10)
	fs.Var(&bufSize, "buf", "read and write size")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ln, err := listenTCP(*listen, stdout)
	if err != nil {
		return fmt.Errorf("splice: %w", err)
	}
	return serve(ctx, ln, func(c net.Conn) {
		d, err := net.DialTimeout("tcp", *to, 10*time.Second)
		if err != nil {
			c.Close()
			return
		}
		forward(c, d, int(bufSize))
	})
}

// socksAccept reads a SOCKS5 greeting (no authentication) and CONNECT
// request for an IPv4 address from c, and returns the target.
func socksAccept(c net.Conn) (string, error) {
	c.SetDeadline(time.Now().Add(30 * time.Second))
	defer c.SetDeadline(time.Time{})
	var b [262]byte
	if _, err := io.ReadFull(c, b[:2]); err != nil {
		return "", err
	}
	if b[0] != 5 {
		return "", fmt.Errorf("socks version %d", b[0])
	}
	if _, err := io.ReadFull(c, b[:b[1]]); err != nil {
		return "", err
	}
	if _, err := c.Write([]byte{5, 0}); err != nil {
		return "", err
	}
	if _, err := io.ReadFull(c, b[:10]); err != nil {
		return "", err
	}
	if b[1] != 1 || b[3] != 1 {
		return "", fmt.Errorf("socks request command %d, address type %d (want CONNECT, IPv4)", b[1], b[3])
	}
	ip := net.IP(b[4:8])
	port := int(b[8])<<8 | int(b[9])
	return net.JoinHostPort(ip.String(), fmt.Sprint(port)), nil
}

// socksReply sends a SOCKS5 reply with code rep and a zero IPv4 address.
func socksReply(c net.Conn, rep byte) error {
	_, err := c.Write([]byte{5, rep, 0, 1, 0, 0, 0, 0, 0, 0})
	return err
}

// openTunnel sends target on a new tunnel stream s and waits for the
// server's status byte, as merpati opens a stream: the app's SOCKS5 reply
// waits for the far end's dial.
func openTunnel(s io.ReadWriter, target string) error {
	msg := append([]byte{byte(len(target))}, target...)
	if _, err := s.Write(msg); err != nil {
		return err
	}
	var st [1]byte
	if _, err := io.ReadFull(s, st[:]); err != nil {
		return err
	}
	if st[0] != 0 {
		return fmt.Errorf("tunnel server could not dial %s", target)
	}
	return nil
}

// acceptTunnel reads a stream's target, dials it and answers with a
// status byte; it returns the connection to the target.
func acceptTunnel(s io.ReadWriter) (net.Conn, error) {
	var n [1]byte
	if _, err := io.ReadFull(s, n[:]); err != nil {
		return nil, err
	}
	target := make([]byte, n[0])
	if _, err := io.ReadFull(s, target); err != nil {
		return nil, err
	}
	d, err := net.DialTimeout("tcp", string(target), 10*time.Second)
	if err != nil {
		s.Write([]byte{1})
		return nil, err
	}
	if _, err := s.Write([]byte{0}); err != nil {
		d.Close()
		return nil, err
	}
	return d, nil
}

// cmdTLSServer is the relay side of the plain TLS tunnel: one TLS
// connection per stream, whose first bytes name the target.
func cmdTLSServer(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("tls-server", stderr)
	listen := fs.String("listen", "127.0.0.1:0", "TCP address")
	cert := fs.String("cert", "", "certificate PEM file (required)")
	key := fs.String("key", "", "key PEM file (required)")
	bufSize := sizeValue(64 << 10)
	fs.Var(&bufSize, "buf", "read and write size")
	if err := fs.Parse(args); err != nil {
		return err
	}
	conf, err := serverConfig(*cert, *key, tunnelALPN)
	if err != nil {
		return fmt.Errorf("tls-server: %w", err)
	}
	ln, err := listenTCP(*listen, stdout)
	if err != nil {
		return fmt.Errorf("tls-server: %w", err)
	}
	return serve(ctx, ln, func(c net.Conn) {
		tc := tls.Server(c, conf)
		defer tc.Close()
		hctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err := tc.HandshakeContext(hctx)
		cancel()
		if err != nil {
			return
		}
		// Like an idle carrier session, an idle connection holds no
		// buffer of its own and no connection to a target until its
		// first bytes come.
		d, err := acceptTunnel(tc)
		if err != nil {
			return
		}
		forward(tc, d, int(bufSize))
	})
}

// cmdTLSClient is the client side of the plain TLS tunnel: SOCKS5 on the
// app's side, one new TLS connection to the tls-server per stream.
func cmdTLSClient(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("tls-client", stderr)
	listen := fs.String("listen", "127.0.0.1:0", "SOCKS5 TCP address")
	server := fs.String("server", "", "tls-server address (required)")
	pin := fs.String("pin", "", "hex SHA-256 of the server certificate's SubjectPublicKeyInfo (required)")
	bufSize := sizeValue(64 << 10)
	fs.Var(&bufSize, "buf", "read and write size")
	if err := fs.Parse(args); err != nil {
		return err
	}
	conf, err := pinnedConfig(*pin, tunnelName, tunnelALPN)
	if err != nil {
		return fmt.Errorf("tls-client: %w", err)
	}
	ln, err := listenTCP(*listen, stdout)
	if err != nil {
		return fmt.Errorf("tls-client: %w", err)
	}
	d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: 10 * time.Second}, Config: conf}
	return serve(ctx, ln, func(c net.Conn) {
		target, err := socksAccept(c)
		if err != nil {
			c.Close()
			return
		}
		dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		s, err := d.DialContext(dctx, "tcp", *server)
		cancel()
		if err == nil {
			if err = openTunnel(s, target); err != nil {
				s.Close()
			}
		}
		if err != nil {
			socksReply(c, 1)
			c.Close()
			return
		}
		if socksReply(c, 0) != nil {
			c.Close()
			s.Close()
			return
		}
		forward(c, s, int(bufSize))
	})
}

// quicTunnelConfig is the quic-go configuration of both sides of the
// plain QUIC tunnel: quic-go's defaults (as the QUIC carrier's), room for
// many concurrent streams, and the carrier's 15-second keep-alive.
func quicTunnelConfig() *quic.Config {
	return &quic.Config{MaxIncomingStreams: 4096, KeepAlivePeriod: 15 * time.Second}
}

// quicStream is a quic-go stream as a connection with a half-close:
// CloseWrite ends the send side (quic-go's Close); Close also stops
// reading, and resets the send side unless CloseWrite ended it (a reset
// after the FIN could discard bytes not yet delivered).
type quicStream struct {
	*quic.Stream
	fin atomic.Bool
}

func (s *quicStream) CloseWrite() error {
	s.fin.Store(true)
	return s.Stream.Close()
}

func (s *quicStream) Close() error {
	s.CancelRead(0)
	if !s.fin.Load() {
		s.CancelWrite(0)
	}
	return nil
}

// cmdQUICServer is the relay side of the plain quic-go tunnel: streams of
// any number of connections, each stream naming its target first.
func cmdQUICServer(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("quic-server", stderr)
	listen := fs.String("listen", "127.0.0.1:0", "UDP address")
	cert := fs.String("cert", "", "certificate PEM file (required)")
	key := fs.String("key", "", "key PEM file (required)")
	bufSize := sizeValue(64 << 10)
	fs.Var(&bufSize, "buf", "read and write size")
	if err := fs.Parse(args); err != nil {
		return err
	}
	conf, err := serverConfig(*cert, *key, tunnelALPN)
	if err != nil {
		return fmt.Errorf("quic-server: %w", err)
	}
	ln, err := quic.ListenAddr(*listen, conf, quicTunnelConfig())
	if err != nil {
		return fmt.Errorf("quic-server: %w", err)
	}
	defer ln.Close()
	fmt.Fprintf(stdout, "listening %s\n", ln.Addr())
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		qc, err := ln.Accept(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("quic-server: accept: %w", err)
		}
		wg.Go(func() {
			defer qc.CloseWithError(0, "")
			for {
				st, err := qc.AcceptStream(ctx)
				if err != nil {
					return
				}
				wg.Go(func() {
					s := &quicStream{Stream: st}
					d, err := acceptTunnel(s)
					if err != nil {
						s.Close()
						return
					}
					forward(s, d, int(bufSize))
				})
			}
		})
	}
}

// cmdQUICClient is the client side of the plain quic-go tunnel: SOCKS5 on
// the app's side, one stream per app connection over one QUIC connection
// to the quic-server (made again if it dies).
func cmdQUICClient(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("quic-client", stderr)
	listen := fs.String("listen", "127.0.0.1:0", "SOCKS5 TCP address")
	server := fs.String("server", "", "quic-server address (required)")
	pin := fs.String("pin", "", "hex SHA-256 of the server certificate's SubjectPublicKeyInfo (required)")
	bufSize := sizeValue(64 << 10)
	fs.Var(&bufSize, "buf", "read and write size")
	if err := fs.Parse(args); err != nil {
		return err
	}
	conf, err := pinnedConfig(*pin, tunnelName, tunnelALPN)
	if err != nil {
		return fmt.Errorf("quic-client: %w", err)
	}
	ln, err := listenTCP(*listen, stdout)
	if err != nil {
		return fmt.Errorf("quic-client: %w", err)
	}
	var mu sync.Mutex
	var qc *quic.Conn
	conn := func() (*quic.Conn, error) {
		mu.Lock()
		defer mu.Unlock()
		if qc != nil && qc.Context().Err() == nil {
			return qc, nil
		}
		dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		c, err := quic.DialAddr(dctx, *server, conf, quicTunnelConfig())
		if err != nil {
			return nil, err
		}
		qc = c
		return c, nil
	}
	defer func() {
		mu.Lock()
		if qc != nil {
			qc.CloseWithError(0, "")
		}
		mu.Unlock()
	}()
	return serve(ctx, ln, func(c net.Conn) {
		target, err := socksAccept(c)
		if err != nil {
			c.Close()
			return
		}
		var s *quicStream
		q, err := conn()
		if err == nil {
			var st *quic.Stream
			if st, err = q.OpenStreamSync(ctx); err == nil {
				s = &quicStream{Stream: st}
				if err = openTunnel(s, target); err != nil {
					s.Close()
				}
			}
		}
		if err != nil {
			socksReply(c, 1)
			c.Close()
			return
		}
		if socksReply(c, 0) != nil {
			c.Close()
			s.Close()
			return
		}
		forward(c, s, int(bufSize))
	})
}
