package h2mux

import (
	"bytes"
	"context"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/merpati/merpati/transport"
)

// heldConn is a conn whose writes, once hold is called, each wait for a
// permit.
type heldConn struct {
	net.Conn
	mu      sync.Mutex
	held    bool
	permits chan struct{}
}

func (c *heldConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	held := c.held
	c.mu.Unlock()
	if held {
		if _, ok := <-c.permits; !ok {
			return 0, net.ErrClosed
		}
	}
	return c.Conn.Write(p)
}

func (c *heldConn) hold() {
	c.mu.Lock()
	c.held = true
	c.mu.Unlock()
}

func (c *heldConn) Close() error {
	c.mu.Lock()
	if c.held {
		c.held = false
		close(c.permits)
	}
	c.mu.Unlock()
	return c.Conn.Close()
}

// heldSessions returns a client session over a heldConn and its server.
func heldSessions(t *testing.T) (*Session, *Session, *heldConn) {
	var held *heldConn
	cs, ss := newSessions(t, func(testing.TB) (net.Conn, net.Conn) {
		c, s := net.Pipe()
		held = &heldConn{Conn: c, permits: make(chan struct{})}
		return held, s
	}, Config{}, Config{})
	return cs, ss, held
}

// startHeldWrites has each of sts write 1,000 bytes, in turn, on cs, whose
// connection holds writes: the first writes directly and waits in the
// connection's Write, the others queue an item each behind it. Each write's
// result comes on the channel returned.
func startHeldWrites(t *testing.T, cs *Session, sts []*Stream) chan error {
	t.Helper()
	writes := make(chan error, len(sts))
	for i, st := range sts {
		go func() {
			b := append(make([]byte, frameHeaderSz), bytes.Repeat([]byte{byte(i)}, 1000)...)
			_, err := st.WriteWithHeadroom(b, frameHeaderSz)
			writes <- err
		}()
		if i == 0 {
			waitFor(t, "the direct write", func() bool {
				cs.mu.Lock()
				defer cs.mu.Unlock()
				return cs.writing
			})
		} else {
			waitFor(t, "an item queued", func() bool { return cs.dataQueued.Load() == int32(i) })
		}
	}
	return writes
}

// waitWriterIdle waits until nobody writes on s.
func waitWriterIdle(t *testing.T, s *Session) {
	t.Helper()
	waitFor(t, "the writer to go idle", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return !s.writerOn && !s.writing
	})
}

// waitFor polls cond until it holds, or fails the test after 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(10 * time.Second); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("still waiting for %s", what)
		}
	}
}

// TestWriteGate: once gateItems DATA items wait for the writer, WaitWrite
// waits; the waiting streams are let on in the order they came, one for
// each item written; a stream let on that writes nothing does not hold
// up the rest (the writer lets them on when its queue is empty); and a
// stream waiting when it is closed, or when its session ends, goes on.
func TestWriteGate(t *testing.T) {
	cs, ss, held := heldSessions(t)
	go func() { // the server reads whatever comes
		for {
			st, err := ss.AcceptStream(context.Background())
			if err != nil {
				return
			}
			go func() { _, _ = st.SpliceTo(discard{}, nil) }()
		}
	}()
	streams := make([]*Stream, 12)
	for i := range streams {
		st, err := cs.OpenStream(ctxT(t))
		if err != nil {
			t.Fatal(err)
		}
		for range paddedWrites + 1 { // past the buffered first writes
			if _, err := st.Write([]byte("open")); err != nil {
				t.Fatal(err)
			}
		}
		streams[i] = st.(*Stream)
	}
	// Everything written so far has reached the server.
	waitWriterIdle(t, cs)
	held.hold()

	// Stream 0 writes directly and waits in the connection's Write;
	// streams 1 to 4 queue an item each behind it.
	writes := startHeldWrites(t, cs, streams[:5])
	gateLen := func() int {
		cs.mu.Lock()
		defer cs.mu.Unlock()
		return len(cs.gateQ)
	}
	// Streams 5 to 10 wait at the gate, in that order.
	passed := make(chan int, 10)
	for i := 5; i <= 10; i++ {
		go func() {
			streams[i].WaitWrite()
			passed <- i
		}()
		waitFor(t, "a stream at the gate", func() bool { return gateLen() == i-4 })
	}
	select {
	case i := <-passed:
		t.Fatalf("stream %d went on with %d items queued", i, gateItems)
	case <-time.After(20 * time.Millisecond):
	}

	// The direct write, then one item: stream 5 goes on, the rest wait.
	held.permits <- struct{}{}
	if err := <-writes; err != nil {
		t.Fatal(err)
	}
	held.permits <- struct{}{}
	if err := <-writes; err != nil {
		t.Fatal(err)
	}
	if i := <-passed; i != 5 {
		t.Fatalf("stream %d went on first; want 5", i)
	}
	select {
	case i := <-passed:
		t.Fatalf("stream %d went on too after one item written", i)
	case <-time.After(20 * time.Millisecond):
	}

	// Two more items: streams 6 and 7 in turn.
	for _, want := range []int{6, 7} {
		held.permits <- struct{}{}
		if err := <-writes; err != nil {
			t.Fatal(err)
		}
		if i := <-passed; i != want {
			t.Fatalf("stream %d went on; want %d", i, want)
		}
	}
	// The last item lets 8 on. None of the four let on writes anything,
	// and 9 and 10 would wait for items that never come; once the queue
	// is empty, the writer lets them on all the same.
	held.permits <- struct{}{}
	if err := <-writes; err != nil {
		t.Fatal(err)
	}
	got := map[int]bool{}
	for range 3 {
		select {
		case i := <-passed:
			got[i] = true
		case <-time.After(10 * time.Second):
			t.Fatalf("streams %v went on; streams whose turn came but who wrote nothing held up the rest", got)
		}
	}
	if !got[8] || !got[9] || !got[10] {
		t.Fatalf("streams %v went on; want 8, 9 and 10", got)
	}
	if n := gateLen(); n != 0 {
		t.Fatalf("%d streams left at the gate", n)
	}

	// With the gate shut again, a stream closed while it waits goes on,
	// and so does one waiting when the session ends.
	for i := 0; i < 5; i++ {
		go func() {
			b := append(make([]byte, frameHeaderSz), make([]byte, 1000)...)
			_, err := streams[i].WriteWithHeadroom(b, frameHeaderSz)
			writes <- err
		}()
	}
	waitFor(t, "the items queued", func() bool { return cs.dataQueued.Load() >= gateItems })
	go func() {
		streams[10].WaitWrite()
		passed <- 10
	}()
	waitFor(t, "a stream at the gate", func() bool { return gateLen() == 1 })
	go func() {
		streams[11].WaitWrite()
		passed <- 11
	}()
	waitFor(t, "a stream at the gate", func() bool { return gateLen() == 2 })
	streams[10].Close()
	if i := <-passed; i != 10 {
		t.Fatalf("stream %d went on; want the closed one, 10", i)
	}
	cs.Close()
	if i := <-passed; i != 11 {
		t.Fatalf("stream %d went on; want 11", i)
	}
	if n := gateLen(); n != 0 {
		t.Fatalf("%d streams left at the gate", n)
	}
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

var _ transport.WriteGate = (*Stream)(nil)

// TestQueuedWriteWhenSessionDies: a Write whose DATA waits in the queue
// while another stream writes directly returns once the session dies. It
// used to wait for good: the direct writer, failing, started no writer
// goroutine for the queue, and nothing told the waiting Write.
func TestQueuedWriteWhenSessionDies(t *testing.T) {
	cs, ss, held := heldSessions(t)
	a, _ := pastPaddedWrites(t, cs, ss)
	b, _ := pastPaddedWrites(t, cs, ss)
	waitWriterIdle(t, cs)
	held.hold()
	writes := startHeldWrites(t, cs, []*Stream{a.(*Stream), b.(*Stream)})
	cs.Close()
	for range 2 {
		select {
		case err := <-writes:
			if err == nil {
				t.Fatal("a write on a closed session reported no error")
			}
		case <-time.After(10 * time.Second):
			t.Fatal("a write still waits after its session was closed")
		}
	}
}

// TestWritesGathered: over a connection that can gather writes (a
// transport.WaitConn, as under TLS), a session's writer and a stream
// writing directly gather every frame they write, and stop gathering
// (which writes out what was gathered) before they give up writing.
func TestWritesGathered(t *testing.T) {
	var g *gatherRecorder
	cs, ss := newSessions(t, func(tb testing.TB) (net.Conn, net.Conn) {
		c, s := tcpPair(tb)
		g = &gatherRecorder{Conn: c}
		return g, s
	}, Config{}, Config{})
	if cs.gather != transport.Gatherer(g) {
		t.Fatal("the session does not gather its writes")
	}
	st, server := pastPaddedWrites(t, cs, ss)
	const size, n = 65500, 32
	got := make(chan error, 1)
	go func() {
		_, err := io.CopyN(io.Discard, server, size*n)
		got <- err
	}()
	g.reset()
	var wg sync.WaitGroup
	for range 2 { // two goroutines: some writes go direct, some queue
		wg.Go(func() {
			b := make([]byte, frameHeaderSz+size)
			for range n / 2 {
				if _, err := st.(*Stream).WriteWithHeadroom(b, frameHeaderSz); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	waitWriterIdle(t, cs)
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.loose > 0 || g.gathered < 4*n || g.on {
		t.Fatalf("%d frame writes gathered, %d not; gathering still on: %v", g.gathered, g.loose, g.on)
	}
}

// gatherRecorder is a transport.Gatherer that counts the writes made while
// it gathers and those made while it does not; it writes them all at once.
type gatherRecorder struct {
	net.Conn
	mu              sync.Mutex
	on              bool
	gathered, loose int
}

func (g *gatherRecorder) Gather(on bool) error {
	g.mu.Lock()
	g.on = on
	g.mu.Unlock()
	return nil
}

func (g *gatherRecorder) Write(p []byte) (int, error) {
	g.mu.Lock()
	if g.on {
		g.gathered++
	} else {
		g.loose++
	}
	g.mu.Unlock()
	return g.Conn.Write(p)
}

func (g *gatherRecorder) reset() {
	g.mu.Lock()
	g.gathered, g.loose = 0, 0
	g.mu.Unlock()
}
