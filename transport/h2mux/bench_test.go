package h2mux

import (
	"context"
	"io"
	"testing"
)

const benchChunk = 64 << 10

// BenchmarkThroughput measures one stream carrying bulk data over loopback
// TCP. Compare with BenchmarkThroughputRawTCP for the framing overhead.
func BenchmarkThroughput(b *testing.B) {
	for _, bc := range []struct {
		name  string
		frame int
	}{{"frame=16K", 0}, {"frame=64K", 64 << 10}} {
		b.Run(bc.name, func(b *testing.B) {
			cfg := Config{MaxFrameSize: bc.frame}
			cs, ss := newSessions(b, tcpPair, cfg, cfg)
			st, err := cs.OpenStream(context.Background())
			if err != nil {
				b.Fatal(err)
			}
			defer st.Close()
			st.Write(nil) // send HEADERS so the server can accept
			srv, err := ss.AcceptStream(context.Background())
			if err != nil {
				b.Fatal(err)
			}
			defer srv.Close()
			benchCopy(b, st, srv)
		})
	}
}

// BenchmarkThroughputRawTCP is the baseline: the same transfer on a bare
// loopback TCP connection.
func BenchmarkThroughputRawTCP(b *testing.B) {
	c, s := tcpPair(b)
	defer c.Close()
	defer s.Close()
	benchCopy(b, c, s)
}

// benchCopy writes b.N chunks to w, reads them from r, and waits for the
// reader to see everything.
func benchCopy(b *testing.B, w io.Writer, r io.Reader) {
	buf := make([]byte, benchChunk)
	done := make(chan int64)
	total := int64(b.N) * benchChunk
	go func() {
		rbuf := make([]byte, benchChunk)
		var got int64
		for got < total {
			k, err := r.Read(rbuf)
			got += int64(k)
			if err != nil {
				break
			}
		}
		done <- got
	}()
	b.SetBytes(benchChunk)
	b.ResetTimer()
	for range b.N {
		if _, err := w.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	if got := <-done; got != total {
		b.Fatalf("read %d of %d bytes", got, total)
	}
}
