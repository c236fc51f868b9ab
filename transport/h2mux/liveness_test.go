package h2mux

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

// slowConn passes at most rate bytes per second through Write, like a
// slow uplink.
type slowConn struct {
	net.Conn
	rate  int
	mu    sync.Mutex
	start time.Time
	sent  int64
}

func (c *slowConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.start.IsZero() {
		c.start = time.Now()
	}
	n := 0
	for len(p) > 0 {
		chunk := p[:min(len(p), 4096)]
		m, err := c.Conn.Write(chunk)
		n += m
		if err != nil {
			return n, err
		}
		p = p[m:]
		c.sent += int64(m)
		if ahead := time.Duration(c.sent)*time.Second/time.Duration(c.rate) - time.Since(c.start); ahead > 0 {
			time.Sleep(ahead)
		}
	}
	return n, nil
}

// TestPingAheadOfData queues far more DATA than the link carries in a
// second (32 streams of 1 MiB at 1 MiB/s, which the server buffers
// without reading) and checks that a PING is answered at once: it goes
// ahead of the queued DATA, which is up to 256 KiB per stream.
func TestPingAheadOfData(t *testing.T) {
	c, s := tcpPair(t)
	cs, err := Client(&slowConn{Conn: c, rate: 1 << 20}, Config{})
	if err != nil {
		t.Fatal(err)
	}
	ss, err := Server(s, Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cs.Close()
		ss.Close()
	})
	ctx := ctxT(t)
	// Wait for the server's SETTINGS, so its stream limit is known.
	if _, err := cs.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cs.Close()
	for range 32 {
		st, err := cs.OpenStream(ctx)
		if err != nil {
			t.Fatal(err)
		}
		wg.Go(func() { st.Write(make([]byte, 1<<20)) })
	}
	// The streams fill the queue; on a busy machine their goroutines may
	// take a while to run, and the link drains only 1 MiB/s.
	queued := 0
	for deadline := time.Now().Add(10 * time.Second); queued < 2<<20 && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
		cs.mu.Lock()
		queued = 0
		for _, it := range cs.wq {
			queued += len(it.data)
		}
		cs.mu.Unlock()
	}
	if queued < 2<<20 {
		t.Fatalf("only %d bytes queued; the test needs seconds of data ahead", queued)
	}
	pctx, cancel := context.WithTimeout(ctx, 4*time.Second)
	defer cancel()
	start := time.Now()
	if _, err := cs.Ping(pctx); err != nil {
		t.Fatalf("ping with %d KiB of DATA queued: %v", queued>>10, err)
	}
	t.Logf("ping answered after %v with %d KiB of DATA queued", time.Since(start).Round(time.Millisecond), queued>>10)
}

// rawServer speaks HTTP/2 by hand to a client session: it reads the
// preface and answers with SETTINGS, and then does what the test says.
type rawServer struct {
	conn net.Conn
	fr   *http2.Framer
}

func newRawServer(t *testing.T, ccfg Config) (*rawServer, *Session) {
	t.Helper()
	c, s := net.Pipe()
	cs, err := Client(c, ccfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		s.Close()
		cs.Close()
	})
	preface := make([]byte, len(http2.ClientPreface))
	if _, err := io.ReadFull(s, preface); err != nil {
		t.Fatal(err)
	}
	rs := &rawServer{conn: s, fr: http2.NewFramer(s, s)}
	if err := rs.fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	return rs, cs
}

// TestPingAnsweredByTraffic checks that any frame from the peer after
// Ping began counts as its answer: a peer whose PING ACK is stuck behind
// other data is alive all the same. The raw server here never answers a
// PING; it sends a WINDOW_UPDATE instead, and Ping, having waited for the
// ACK until its deadline, succeeds.
func TestPingAnsweredByTraffic(t *testing.T) {
	rs, cs := newRawServer(t, Config{})
	var wg sync.WaitGroup
	defer wg.Wait()
	defer rs.conn.Close()
	sawPing := make(chan struct{})
	wg.Go(func() {
		for {
			f, err := rs.fr.ReadFrame()
			if err != nil {
				return
			}
			if p, ok := f.(*http2.PingFrame); ok && !p.IsAck() {
				close(sawPing)
				break
			}
		}
		// Drain what the client writes while we write to it (net.Pipe
		// is unbuffered).
		wg.Go(func() { io.Copy(io.Discard, rs.conn) })
		time.Sleep(50 * time.Millisecond)
		rs.fr.WriteWindowUpdate(0, 1)
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	rtt, err := cs.Ping(ctx)
	if err != nil {
		t.Fatalf("ping answered by a WINDOW_UPDATE: %v", err)
	}
	select {
	case <-sawPing:
	default:
		t.Error("Ping returned before its PING was sent")
	}
	if rtt != 0 {
		t.Errorf("rtt = %v without any PING acknowledged, want 0 (unknown)", rtt)
	}
	// A peer that sends nothing at all does not answer.
	ctx2, cancel2 := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel2()
	if _, err := cs.Ping(ctx2); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("ping of a silent peer: %v, want deadline exceeded", err)
	}
}

// TestServerAcksUpload checks that a server session returns connection
// window every serverWindowStep bytes its application reads, long before
// half the window, so that a client on a slow uplink hears from it.
func TestServerAcksUpload(t *testing.T) {
	rc, ss := newRawClient(t, Config{})
	var wg sync.WaitGroup
	defer wg.Wait()
	defer rc.conn.Close()
	wg.Go(func() {
		st, err := ss.AcceptStream(context.Background())
		if err != nil {
			return
		}
		io.Copy(io.Discard, st)
	})
	if _, err := rc.conn.Write([]byte(http2.ClientPreface)); err != nil {
		t.Fatal(err)
	}
	got := make(chan uint32, 1)
	wg.Go(func() {
		for {
			f, err := rc.fr.ReadFrame()
			if err != nil {
				return
			}
			if wu, ok := f.(*http2.WindowUpdateFrame); ok && wu.StreamID == 0 && wu.Increment < 1<<20 {
				// Not the opening update of the preface: one for
				// what the application read.
				select {
				case got <- wu.Increment:
				default:
				}
			}
		}
	})
	if err := rc.fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	block := []byte{0x83, 0x87, 0x84, 0x41, 0x01, 'x'} // POST https / x
	if err := rc.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block, EndHeaders: true}); err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 16384)
	for range 4 { // 64 KiB, within the 65535-byte initial windows
		if err := rc.fr.WriteData(1, false, chunk[:16383]); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case inc := <-got:
		if inc < serverWindowStep {
			t.Errorf("WINDOW_UPDATE of %d, want at least %d", inc, serverWindowStep)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no connection WINDOW_UPDATE for 64 KiB read")
	}
}

// TestServerAcksFastUpload checks that on a fast uplink a server session
// returns connection window once per serverWindowEvery, not per
// serverWindowStep: 4 MiB read at once used to cost 128 WINDOW_UPDATE
// frames, records and writes.
func TestServerAcksFastUpload(t *testing.T) {
	const size = 4 << 20 // within the server's 6 MiB stream and 15 MiB connection windows
	rc, ss := newRawClient(t, Config{})
	var wg sync.WaitGroup
	defer wg.Wait()
	defer rc.conn.Close()
	read := make(chan int64, 1)
	wg.Go(func() {
		st, err := ss.AcceptStream(context.Background())
		if err != nil {
			read <- 0
			return
		}
		n, _ := io.CopyN(io.Discard, st, size)
		read <- n
	})
	if _, err := rc.conn.Write([]byte(http2.ClientPreface)); err != nil {
		t.Fatal(err)
	}
	ready := make(chan struct{}) // the server's SETTINGS and its opening WINDOW_UPDATE came
	var updates atomic.Int64     // connection WINDOW_UPDATEs for what the application read
	wg.Go(func() {
		settings, opened, signalled := false, false, false
		for {
			f, err := rc.fr.ReadFrame()
			if err != nil {
				return
			}
			switch f := f.(type) {
			case *http2.SettingsFrame:
				settings = settings || !f.IsAck()
			case *http2.WindowUpdateFrame:
				if f.StreamID != 0 {
					continue
				}
				if !opened {
					opened = true
				} else {
					updates.Add(1)
				}
			}
			if settings && opened && !signalled {
				close(ready)
				signalled = true
			}
		}
	})
	if err := rc.fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ready:
	case <-time.After(5 * time.Second):
		t.Fatal("no SETTINGS and WINDOW_UPDATE from the server")
	}
	block := []byte{0x83, 0x87, 0x84, 0x41, 0x01, 'x'} // POST https / x
	if err := rc.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block, EndHeaders: true}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	chunk := make([]byte, 16384)
	for sent := 0; sent < size; sent += len(chunk) {
		if err := rc.fr.WriteData(1, false, chunk); err != nil {
			t.Fatal(err)
		}
	}
	if n := <-read; n != size {
		t.Fatalf("server read %d bytes of %d", n, size)
	}
	elapsed := time.Since(start)
	// Frames queued before the read ended may still be on their way.
	time.Sleep(50 * time.Millisecond)
	got := updates.Load()
	// One per serverWindowEvery, one per serverWindowMax, and the first.
	limit := int64(elapsed/serverWindowEvery) + size/serverWindowMax + 1
	t.Logf("%d connection WINDOW_UPDATEs for %d bytes read in %v (limit %d; one per %d bytes would be %d)",
		got, size, elapsed, limit, serverWindowStep, size/serverWindowStep)
	if got > limit {
		t.Errorf("%d connection WINDOW_UPDATEs for %d bytes read in %v, want at most %d", got, size, elapsed, limit)
	}
}
