//go:build unix

package transport

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync/atomic"
	"testing"
	"time"
)

// TestWaitConn: a WaitConn's Read calls its OnReadWait function once
// before each wait for bytes, and not when bytes are there; it reads what
// a TCP conn reads, EOF once the peer has closed, and fails at its read
// deadline as a TCP conn does. SetOnReadWait finds it under conns that
// name it with NetConn.
func TestWaitConn(t *testing.T) {
	a, b := tcpPair(t)
	defer a.Close()
	c := NewWaitConn(b)
	defer c.Close()
	wc, ok := c.(*WaitConn)
	if !ok {
		t.Fatalf("NewWaitConn of a TCP conn is a %T", c)
	}
	var waits atomic.Int32
	waited := make(chan struct{}, 1)
	if !SetOnReadWait(netConner{netConner{c}}, func() {
		waits.Add(1)
		select {
		case waited <- struct{}{}:
		default:
		}
	}) {
		t.Fatal("SetOnReadWait did not find the WaitConn")
	}
	buf := make([]byte, 64)

	// Bytes already there: no wait.
	a.Write([]byte("ready"))
	if !wc.WaitRead() {
		t.Fatal("WaitRead could not wait")
	}
	if n, err := c.Read(buf); string(buf[:n]) != "ready" || err != nil {
		t.Fatalf("Read = %q, %v", buf[:n], err)
	}
	if w := waits.Load(); w != 0 {
		t.Fatalf("OnReadWait called %d times with bytes there", w)
	}

	// Nothing there: one call, then the wait, then the bytes.
	go func() {
		<-waited
		a.Write([]byte("later"))
	}()
	if n, err := c.Read(buf); string(buf[:n]) != "later" || err != nil {
		t.Fatalf("Read = %q, %v", buf[:n], err)
	}
	if w := waits.Load(); w != 1 {
		t.Fatalf("OnReadWait called %d times for one wait", w)
	}

	// A Read allocates nothing (a relay's idle sessions each wait in one).
	a.Write(make([]byte, 200))
	one := make([]byte, 1)
	if allocs := testing.AllocsPerRun(100, func() { c.Read(one) }); allocs != 0 {
		t.Errorf("a Read allocates %.1f times", allocs)
	}
	if _, err := io.ReadFull(c, make([]byte, 200-101)); err != nil { // the rest (AllocsPerRun runs once more)
		t.Fatal(err)
	}

	// The read deadline.
	c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if _, err := c.Read(buf); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Read past the deadline: %v", err)
	}
	var ne net.Error
	if _, err := c.Read(buf); !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("Read past the deadline: %v, not a timeout", err)
	}
	c.SetReadDeadline(time.Time{})

	// The peer's end.
	a.Write([]byte("last"))
	a.Close()
	got, err := io.ReadAll(c)
	if string(got) != "last" || err != nil {
		t.Fatalf("ReadAll = %q, %v", got, err)
	}

	// A closed conn.
	c.Close()
	if _, err := c.Read(buf); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Read of a closed conn: %v", err)
	}

	if p1, p2 := net.Pipe(); SetOnReadWait(p1, func() {}) {
		t.Error("SetOnReadWait found a WaitConn in a net.Pipe conn")
	} else {
		p1.Close()
		p2.Close()
	}
}

// netConner names the conn under it, as crypto/tls's Conn does.
type netConner struct{ net.Conn }

func (c netConner) NetConn() net.Conn { return c.Conn }

// TestSpliceHeadroom: Splice's copy gives a HeadroomWriter its data with the free
// bytes it asked for before it, and does not mind it overwriting all of
// them; what it wrote arrives whole, in order and counted, small reads
// and big ones, and the end half-closes it as usual.
func TestSpliceHeadroom(t *testing.T) {
	const head = 9
	src, a := tcpPair(t)
	defer src.Close()
	hw := &headroomConn{head: head}
	data := make([]byte, 1<<20+12345)
	for i := range data {
		data[i] = byte(i * 7 / 5)
	}
	done := make(chan int64)
	var counted atomic.Int64
	go func() {
		done <- copyHalf(hw, a, func(n int) { counted.Add(int64(n)) }, func() { t.Error("copy aborted") })
	}()
	// A few small writes (the small buffer), then a big one.
	for _, b := range [][]byte{data[:10], data[10:300], data[300:]} {
		if _, err := src.Write(b); err != nil {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	src.CloseWrite()
	n := <-done
	if n != int64(len(data)) || counted.Load() != n {
		t.Fatalf("copied %d bytes, counted %d, want %d", n, counted.Load(), len(data))
	}
	if !bytes.Equal(hw.got.Bytes(), data) {
		t.Fatalf("the HeadroomWriter got %d bytes, not the %d written", hw.got.Len(), len(data))
	}
	if hw.writes < 3 || !hw.closedWrite {
		t.Fatalf("%d writes, CloseWrite %v", hw.writes, hw.closedWrite)
	}
}

// headroomConn is a HeadroomWriter that keeps what it is given and then
// overwrites all of it, as it may; copyHalf calls nothing else but
// CloseWrite.
type headroomConn struct {
	net.Conn    // nil: only what Splice calls is here
	head        int
	got         bytes.Buffer
	writes      int
	closedWrite bool
}

func (c *headroomConn) WriteHeadroom() int { return c.head }

func (c *headroomConn) WriteWithHeadroom(b []byte, head int) (int, error) {
	if head != c.head {
		return 0, errors.New("wrong headroom")
	}
	c.got.Write(b[head:])
	c.writes++
	for i := range b {
		b[i] = 0xee
	}
	return len(b) - head, nil
}

func (c *headroomConn) Write([]byte) (int, error) {
	return 0, errors.New("Write, not WriteWithHeadroom")
}
func (c *headroomConn) CloseWrite() error { c.closedWrite = true; return nil }
func (c *headroomConn) Close() error      { return nil }

// TestSpliceWriteGate: a WriteGate destination is asked to wait before
// each read that follows a read of a whole big buffer, and not before the
// reads of messages, small or of some KiB.
func TestSpliceWriteGate(t *testing.T) {
	src, a := tcpPair(t)
	defer src.Close()
	g := &gateConn{}
	data := make([]byte, 1<<20+777)
	for i := range data {
		data[i] = byte(i * 13 / 7)
	}
	done := make(chan int64)
	go func() { done <- copyHalf(g, a, nil, func() { t.Error("copy aborted") }) }()
	msgs := 100 + 10<<10
	for _, b := range [][]byte{data[:100], data[100:msgs], data[msgs:]} {
		if _, err := src.Write(b); err != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond) // each read on its own
	}
	src.CloseWrite()
	if n := <-done; n != int64(len(data)) || !bytes.Equal(g.got.Bytes(), data) {
		t.Fatalf("copied %d bytes (%d kept), want %d", n, g.got.Len(), len(data))
	}
	waits, written, full := 0, 0, false
	for _, e := range g.events {
		if e == -1 {
			waits++
			full = false
			continue
		}
		if written < msgs && waits > 0 {
			t.Fatalf("events %v: a message waited at the gate", g.events)
		}
		if full {
			t.Fatalf("events %v: a read after a whole big buffer did not wait", g.events)
		}
		written += e
		full = e == bigBuf
	}
	if waits == 0 {
		t.Fatalf("events %v: no wait at the gate", g.events)
	}
}

// gateConn is a WriteGate that logs its waits (as -1) and the sizes of
// the writes it takes.
type gateConn struct {
	net.Conn // nil: only what Splice calls is here
	events   []int
	got      bytes.Buffer
}

func (c *gateConn) WaitWrite() { c.events = append(c.events, -1) }

func (c *gateConn) Write(b []byte) (int, error) {
	c.events = append(c.events, len(b))
	c.got.Write(b)
	return len(b), nil
}
func (c *gateConn) CloseWrite() error { return nil }
func (c *gateConn) Close() error      { return nil }

// TestWaitConnGather: while gathering, a WaitConn writes what it is given
// in fewer system calls, all of it and in order, and the rest when
// gathering stops; writes before and after go out as they come. FindGatherer
// finds it under conns that name it with NetConn.
func TestWaitConnGather(t *testing.T) {
	a, b := tcpPair(t)
	defer a.Close()
	c := NewWaitConn(b).(*WaitConn)
	defer c.Close()
	if g := FindGatherer(netConner{netConner{c}}); g != Gatherer(c) {
		t.Fatalf("FindGatherer = %v", g)
	}
	if g := FindGatherer(netConner{b}); g != nil {
		t.Fatalf("FindGatherer found %v over a plain TCP conn", g)
	}
	const record = 16<<10 + 22 // a TLS record of 16 KiB
	var want bytes.Buffer
	write := func(n int) {
		t.Helper()
		p := make([]byte, n)
		for i := range p {
			p[i] = byte(want.Len() + i*3)
		}
		if m, err := c.Write(p); m != n || err != nil {
			t.Fatalf("Write = %d, %v", m, err)
		}
		want.Write(p)
	}
	got := make(chan []byte)
	go func() {
		b, _ := io.ReadAll(a)
		got <- b
	}()

	write(100) // not gathering
	if err := c.Gather(true); err != nil {
		t.Fatal(err)
	}
	w0 := writeSyscalls(t)
	for range 20 {
		write(record)
	}
	write(7)
	write(gatherSize + 1) // too big to gather: written as it comes
	write(record)
	if err := c.Gather(false); err != nil {
		t.Fatal(err)
	}
	if w0 >= 0 {
		// 20 records gathered four to a write (the last four with
		// the 7 bytes), the big one, and the last record: 7 writes,
		// against 23 one by one. The runtime may write too (to wake
		// its poller).
		n := writeSyscalls(t) - w0
		if n > 12 {
			t.Errorf("%d write system calls for 23 writes gathered, want about 7", n)
		}
	}
	write(5) // not gathering
	c.CloseWrite()
	if b := <-got; !bytes.Equal(b, want.Bytes()) {
		t.Fatalf("the peer read %d bytes, not the %d written in that order", len(b), want.Len())
	}
	if c.gather != nil {
		t.Fatal("the gathering buffer is still held")
	}
}

// writeSyscalls returns the process's write system calls so far (syscw of
// /proc/self/io), or -1 where it cannot tell.
func writeSyscalls(t *testing.T) int {
	b, err := os.ReadFile("/proc/self/io")
	if err != nil {
		return -1
	}
	for line := range bytes.Lines(b) {
		var n int
		if _, err := fmt.Sscanf(string(line), "syscw: %d", &n); err == nil {
			return n
		}
	}
	t.Fatalf("no syscw in /proc/self/io: %q", b)
	return -1
}
