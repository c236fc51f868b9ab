package relaytest

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"testing"

	"github.com/merpati/merpati/transport"
)

// StartServer starts a TCP server on 127.0.0.1:0 that runs serve, in a
// goroutine of its own, for each connection it accepts (serve closes it),
// and returns its address. At the end of the test it stops listening and
// waits for every serve to return: serve must return once its peer has
// gone.
func StartServer(t testing.TB, serve func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return Serve(t, ln, serve)
}

// Serve is [StartServer] on a listener of the caller's (a TLS one, say),
// which it then owns.
func Serve(t testing.TB, ln net.Listener, serve func(net.Conn)) string {
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() { serve(c) })
		}
	})
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	return ln.Addr().String()
}

// StartEcho starts a TCP server on 127.0.0.1:0 that echoes each connection
// until the peer half-closes, then half-closes too.
func StartEcho(t testing.TB) string { return StartServer(t, ServeEcho) }

// ServeEcho echoes c until the peer half-closes, then half-closes c if it
// can, waits for the peer to close and closes c.
func ServeEcho(c net.Conn) {
	defer c.Close()
	io.Copy(c, c)
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
		io.Copy(io.Discard, c)
	}
}

// StartSink starts a TCP server on 127.0.0.1:0 that serves each connection
// with [ServeSink].
func StartSink(t testing.TB) string { return StartServer(t, ServeSink) }

// ServeSink reads c to its end, 64 KiB at a time, then writes how many
// bytes it read, in decimal, and closes c. (io.Discard's ReadFrom reads
// 8 KiB per system call, which would charge a sink's cost to the path
// under a benchmark.)
func ServeSink(c net.Conn) {
	defer c.Close()
	// Hide ReadFrom and WriteTo so that CopyBuffer uses buf.
	n, _ := io.CopyBuffer(struct{ io.Writer }{io.Discard}, struct{ io.Reader }{c}, make([]byte, 64<<10))
	fmt.Fprintf(c, "%d", n)
}

// StartSource starts a TCP server on 127.0.0.1:0 that serves each
// connection with [ServeSource].
func StartSource(t testing.TB) string { return StartServer(t, ServeSource) }

// SourceChunk is the size of [ServeSource]'s writes.
const SourceChunk = 32 << 10

// ServeSource reads an 8-byte big-endian count from c, writes that many
// zero bytes, SourceChunk at a time, and closes c.
func ServeSource(c net.Conn) {
	defer c.Close()
	var n [8]byte
	if _, err := io.ReadFull(c, n[:]); err != nil {
		return
	}
	buf := make([]byte, SourceChunk)
	for left := int64(binary.BigEndian.Uint64(n[:])); left > 0; {
		k := min(left, int64(len(buf)))
		if _, err := c.Write(buf[:k]); err != nil {
			return
		}
		left -= k
	}
}

// Target returns the stream target for addr, a "host:port" with an IP
// address.
func Target(t testing.TB, addr string) transport.Target {
	t.Helper()
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		t.Fatal(err)
	}
	return transport.AddrTarget(host, uint16(p))
}
