package client_test

// Benchmarks of the whole path, client.OpenStream → TLS carrier (uTLS
// Chrome hello, TLS 1.3, HTTP/2 mux) → relay → a local TCP target, each
// against plain crypto/tls on the same loopback in the same run.
// scripts/bench.sh runs them and prints the ratios.

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"strconv"
	"testing"

	"github.com/merpati/merpati/client"
	"github.com/merpati/merpati/relay/access"
	"github.com/merpati/merpati/relay/relaytest"
	"github.com/merpati/merpati/transport"
	"github.com/merpati/merpati/transport/link"
	"github.com/merpati/merpati/transport/tlscarrier"
)

// benchChunk is the size of each write in the throughput benchmarks, and
// the bytes counted per iteration: the source target's own write size.
const benchChunk = relaytest.SourceChunk

// benchCipher is the suite both sides of every benchmark use: the carrier's
// Chrome hello lists TLS_AES_128_GCM_SHA256 first and Go's TLS 1.3 server
// picks it on hardware with AES instructions, so the baseline is pinned to
// it too (see plainTLSClient).
const benchCipher = tls.TLS_AES_128_GCM_SHA256

// benchPath is a relay and a client started for a benchmark, with the
// local targets the relay may dial.
type benchPath struct {
	c                  *client.Client
	sink, source, echo transport.Target
}

func startBenchPath(b *testing.B) *benchPath {
	b.Helper()
	cov := relaytest.StartCover(b)
	r := startRelay(b, cov, nil)
	l := r.AddKey(b, "bench", access.Entry{})
	// Carrier A only: the relay may also offer QUIC, which the client
	// would prefer.
	l.Carriers = []string{link.CarrierTLS}
	c, _ := startClient(b, l, nil)
	p := &benchPath{
		c:      c,
		sink:   relaytest.Target(b, relaytest.StartSink(b)),
		source: relaytest.Target(b, relaytest.StartSource(b)),
		echo:   relaytest.Target(b, relaytest.StartEcho(b)),
	}
	// Warm up: the first OpenStream dials the relay and sets up the session.
	st, err := c.OpenStream(context.Background(), p.echo)
	if err != nil {
		b.Fatal(err)
	}
	st.Close()
	return p
}

// A halfCloser is a connection whose write side can be shut alone.
type halfCloser interface {
	io.ReadWriteCloser
	CloseWrite() error
}

// upload writes b.N chunks to c, half-closes, and checks that the far end
// (relaytest.StartSink, or the plain TLS sink) counted them all.
func upload(b *testing.B, c halfCloser) {
	buf := make([]byte, benchChunk)
	// Not b.Loop: the timer must run until the sink has counted the last
	// byte, not stop when the last write returns into a buffer.
	b.ResetTimer()
	for range b.N {
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	if err := c.CloseWrite(); err != nil {
		b.Fatal(err)
	}
	got, err := io.ReadAll(c)
	if err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	if want := strconv.FormatInt(int64(b.N)*benchChunk, 10); string(got) != want {
		b.Fatalf("sink counted %q bytes, want %s", got, want)
	}
}

// download asks the far end (relaytest.StartSource, or the plain TLS source) for b.N
// chunks and reads them.
func download(b *testing.B, c halfCloser) {
	total := int64(b.N) * benchChunk
	b.ResetTimer()
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], uint64(total))
	if _, err := c.Write(n[:]); err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, benchChunk)
	var got int64
	for got < total {
		k, err := c.Read(buf)
		got += int64(k)
		if err != nil {
			break
		}
	}
	b.StopTimer()
	if got != total {
		b.Fatalf("read %d bytes, want %d", got, total)
	}
}

// BenchmarkThroughput measures bulk transfer on one stream through the
// client, the carrier and the relay to a local target. Compare with
// BenchmarkThroughputPlainTLS.
func BenchmarkThroughput(b *testing.B) {
	p := startBenchPath(b)
	for _, bc := range []struct {
		name   string
		target transport.Target
		run    func(*testing.B, halfCloser)
	}{
		{"dir=up", p.sink, upload},
		{"dir=down", p.source, download},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.SetBytes(benchChunk)
			st, err := p.c.OpenStream(context.Background(), bc.target)
			if err != nil {
				b.Fatal(err)
			}
			defer st.Close()
			bc.run(b, st)
		})
	}
}

// plainTLSServer starts a crypto/tls TLS 1.3 server on 127.0.0.1:0 with a
// certificate like the relay's (tlscarrier.NewCertificate, ECDSA P-256)
// that serves each connection with serve.
func plainTLSServer(tb testing.TB, serve func(net.Conn)) string {
	tb.Helper()
	certPEM, keyPEM, err := tlscarrier.NewCertificate(relaytest.CoverName)
	if err != nil {
		tb.Fatal(err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		tb.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		Certificates: []tls.Certificate{cert},
		MinVersion:   tls.VersionTLS13,
	})
	if err != nil {
		tb.Fatal(err)
	}
	return relaytest.Serve(tb, ln, serve)
}

// plainTLSClient dials addr with crypto/tls and checks that the handshake
// chose TLS 1.3 with benchCipher, the carrier's suite.
func plainTLSClient(tb testing.TB, addr string) *tls.Conn {
	c, err := tls.Dial("tcp", addr, &tls.Config{ServerName: relaytest.CoverName, InsecureSkipVerify: true, MinVersion: tls.VersionTLS13})
	if err != nil {
		tb.Fatal(err)
	}
	if s := c.ConnectionState(); s.Version != tls.VersionTLS13 || s.CipherSuite != benchCipher {
		tb.Fatalf("plain TLS negotiated %s %s, want TLS 1.3 %s", tls.VersionName(s.Version), tls.CipherSuiteName(s.CipherSuite), tls.CipherSuiteName(benchCipher))
	}
	return c
}

// BenchmarkThroughputPlainTLS is BenchmarkThroughput's baseline: the same
// transfers on one crypto/tls connection to a local TLS server.
func BenchmarkThroughputPlainTLS(b *testing.B) {
	sink := plainTLSServer(b, func(c net.Conn) {
		defer c.Close()
		n, _ := io.Copy(io.Discard, c)
		fmt.Fprintf(c, "%d", n)
	})
	source := plainTLSServer(b, relaytest.ServeSource)
	for _, bc := range []struct {
		name string
		addr string
		run  func(*testing.B, halfCloser)
	}{
		{"dir=up", sink, upload},
		{"dir=down", source, download},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.SetBytes(benchChunk)
			c := plainTLSClient(b, bc.addr)
			defer c.Close()
			bc.run(b, c)
		})
	}
}

// pingPong writes one byte to c and reads it back.
func pingPong(b *testing.B, c io.ReadWriter) {
	var one [1]byte
	if _, err := c.Write([]byte{'x'}); err != nil {
		b.Fatal(err)
	}
	if _, err := io.ReadFull(c, one[:]); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkStreamOpen measures what a new Telegram connection costs on an
// established session: OpenStream until the relay's OK (the relay has
// dialled the target), then one byte to the echo target and back. Compare
// with BenchmarkPlainTLSConnect.
func BenchmarkStreamOpen(b *testing.B) {
	p := startBenchPath(b)
	ctx := context.Background()
	for b.Loop() {
		st, err := p.c.OpenStream(ctx, p.echo)
		if err != nil {
			b.Fatal(err)
		}
		pingPong(b, st)
		st.Close()
	}
}

// BenchmarkPlainTLSConnect is BenchmarkStreamOpen's baseline: a fresh TCP
// connection and TLS 1.3 handshake to a local TLS echo server, then one
// byte there and back.
func BenchmarkPlainTLSConnect(b *testing.B) {
	addr := plainTLSServer(b, func(c net.Conn) {
		defer c.Close()
		io.Copy(c, c)
	})
	for b.Loop() {
		c := plainTLSClient(b, addr)
		pingPong(b, c)
		c.Close()
	}
}

// BenchmarkThroughputPlainTLSProxy is a second baseline with merpati's
// topology but nothing of merpati: a crypto/tls client to a TLS-terminating
// TCP forwarder (transport.Splice) in front of the same local target. The
// gap between it and BenchmarkThroughputPlainTLS is the cost of the extra
// hop itself; the gap to BenchmarkThroughput is merpati's own.
func BenchmarkThroughputPlainTLSProxy(b *testing.B) {
	forward := func(target string) func(net.Conn) {
		return func(c net.Conn) {
			up, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				return
			}
			transport.Splice(c, up, nil)
		}
	}
	sink := plainTLSServer(b, forward(relaytest.StartSink(b)))
	source := plainTLSServer(b, forward(relaytest.StartSource(b)))
	for _, bc := range []struct {
		name string
		addr string
		run  func(*testing.B, halfCloser)
	}{
		{"dir=up", sink, upload},
		{"dir=down", source, download},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.SetBytes(benchChunk)
			c := plainTLSClient(b, bc.addr)
			defer c.Close()
			bc.run(b, c)
		})
	}
}
