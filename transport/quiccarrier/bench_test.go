package quiccarrier

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"testing"

	upquic "github.com/quic-go/quic-go"

	"github.com/merpati/merpati/transport"
	"github.com/merpati/merpati/transport/auth"
	"github.com/merpati/merpati/transport/h2mux"
	"github.com/merpati/merpati/transport/hello"
	"github.com/merpati/merpati/transport/tlscarrier"
)

// The benchmarks compare, on the same loopback in the same run, one
// stream through the QUIC carrier, a plain upstream quic-go stream (no
// HTTP/3, no parrot) and the TLS carrier. scripts/bench-quic.sh runs them
// with the UDP buffer sizes quic-go asks for.
//
//	Throughput: the client writes b.N chunks of 64 KiB on one stream;
//	the server reads them all and answers one byte at EOF.
//	StreamOpen: open a stream and run the open request/reply exchange
//	(for the plain stream, one byte each way): one round trip each.

const benchChunk = 64 << 10

// A benchOpener opens a stream to a server that discards what it reads
// and answers one byte at EOF; it returns the stream and its half-close.
type benchOpener func(ctx context.Context) (net.Conn, func() error, error)

func BenchmarkThroughput(b *testing.B) {
	for _, c := range benchCarriers(b) {
		b.Run(c.name, func(b *testing.B) {
			st, closeWrite, err := c.open(b.Context())
			if err != nil {
				b.Fatal(err)
			}
			defer st.Close()
			buf := make([]byte, benchChunk)
			b.SetBytes(benchChunk)
			b.ResetTimer()
			for range b.N {
				if _, err := st.Write(buf); err != nil {
					b.Fatal(err)
				}
			}
			if err := closeWrite(); err != nil {
				b.Fatal(err)
			}
			if _, err := io.ReadFull(st, make([]byte, 1)); err != nil {
				b.Fatal(err)
			}
		})
	}
}

func BenchmarkStreamOpen(b *testing.B) {
	for _, c := range benchCarriers(b) {
		b.Run(c.name, func(b *testing.B) {
			for range b.N {
				st, closeWrite, err := c.open(b.Context())
				if err != nil {
					b.Fatal(err)
				}
				closeWrite()
				st.Close()
			}
		})
	}
}

type benchCarrier struct {
	name string
	open benchOpener
}

// benchCarriers starts the three servers and dials one session to each.
func benchCarriers(b *testing.B) []benchCarrier {
	b.Helper()
	return []benchCarrier{
		{"quiccarrier", benchQUICCarrier(b)},
		{"plain-quic-go", benchPlainQUIC(b)},
		{"tlscarrier", benchTLSCarrier(b)},
	}
}

// sinkStream serves one carrier stream: open exchange, read all, one byte.
func sinkStream(st transport.Stream) {
	if _, err := transport.ReadOpenRequest(st); err != nil {
		return
	}
	if _, err := (transport.OpenReply{Status: transport.StatusOK}).WriteTo(st); err != nil {
		return
	}
	io.Copy(io.Discard, st)
	st.Write([]byte{1})
	st.CloseWrite()
}

// carrierOpener opens a stream on s and runs the open exchange.
func carrierOpener(s transport.Session) benchOpener {
	return func(ctx context.Context) (net.Conn, func() error, error) {
		st, err := s.OpenStream(ctx)
		if err != nil {
			return nil, nil, err
		}
		if _, err := (transport.OpenRequest{Target: transport.DCTarget(2)}).WriteTo(st); err != nil {
			return nil, nil, err
		}
		if _, err := transport.ReadOpenReply(st); err != nil {
			return nil, nil, err
		}
		return st, st.CloseWrite, nil
	}
}

func benchQUICCarrier(b *testing.B) benchOpener {
	tr := &testRelay{key: auth.NewKey(), cert: testCert(b)}
	tr.pin, _ = tlscarrier.Pin(tr.cert)
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	l, err := Listen(pc, ListenConfig{
		Certificate: tr.cert,
		Cover:       startCover(b).addr,
		Auth:        &testAuth{keys: []auth.Key{tr.key}},
	})
	if err != nil {
		b.Fatal(err)
	}
	serveEach(b, l, func(st transport.Stream, _ transport.Key) { sinkStream(st) })
	tr.addr = pc.LocalAddr().String()
	s := dial(b, tr)
	return carrierOpener(s)
}

func benchPlainQUIC(b *testing.B) benchOpener {
	cert := testCert(b)
	ln, err := upquic.ListenAddr("127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"bench"}}, &upquic.Config{})
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept(context.Background())
			if err != nil {
				return
			}
			go func() {
				for {
					st, err := c.AcceptStream(context.Background())
					if err != nil {
						return
					}
					go func() {
						// One byte each way first, like the open
						// exchange; then the sink.
						if _, err := io.ReadFull(st, make([]byte, 1)); err != nil {
							return
						}
						st.Write([]byte{0})
						io.Copy(io.Discard, st)
						st.Write([]byte{1})
						st.Close()
					}()
				}
			}()
		}
	}()
	conn, err := upquic.DialAddr(b.Context(), ln.Addr().String(), &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"bench"}}, &upquic.Config{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { conn.CloseWithError(0, ""); ln.Close(); <-done })
	return func(ctx context.Context) (net.Conn, func() error, error) {
		st, err := conn.OpenStreamSync(ctx)
		if err != nil {
			return nil, nil, err
		}
		ps := &plainStream{Stream: st, conn: conn}
		if _, err := st.Write([]byte{1}); err != nil {
			return nil, nil, err
		}
		if _, err := io.ReadFull(st, make([]byte, 1)); err != nil {
			return nil, nil, err
		}
		return ps, st.Close, nil
	}
}

// plainStream adapts an upstream *quic.Stream to net.Conn.
type plainStream struct {
	*upquic.Stream
	conn *upquic.Conn
}

func (p *plainStream) LocalAddr() net.Addr  { return p.conn.LocalAddr() }
func (p *plainStream) RemoteAddr() net.Addr { return p.conn.RemoteAddr() }
func (p *plainStream) Close() error {
	p.Stream.CancelRead(0)
	return p.Stream.Close()
}

func benchTLSCarrier(b *testing.B) benchOpener {
	cert := testCert(b)
	pin, _ := tlscarrier.Pin(cert)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				rec, err := hello.ReadRecord(c)
				if err != nil {
					return
				}
				s, err := tlscarrier.Accept(context.Background(), c, rec, tlscarrier.ServerConfig{Certificate: cert})
				if err != nil {
					return
				}
				defer s.Close()
				for {
					st, err := s.AcceptStream(context.Background())
					if err != nil {
						return
					}
					go sinkStream(st)
				}
			}()
		}
	}()
	d, err := tlscarrier.NewDialer(tlscarrier.ClientConfig{Addr: ln.Addr().String(), ServerName: testSNI, Pin: pin, Key: auth.NewKey(), Mux: h2mux.Config{}})
	if err != nil {
		b.Fatal(err)
	}
	s, err := d.Dial(b.Context())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close(); ln.Close(); <-done })
	return carrierOpener(s)
}
