package transport

import (
	"io"
	"net"
	"sync"
	"sync/atomic"
)

// A WaitConn is a TCP connection that calls a function each time a Read is
// about to wait for bytes (see [NewWaitConn]). A reader that hands what it
// reads to others in batches, such as a multiplexed session's read loop
// waking the readers of its streams, hands them on then, once the socket
// is drained, rather than after each read.
//
// It is also a [Gatherer]: a writer that knows when a run of writes ends
// can have them gathered into fewer system calls.
type WaitConn struct {
	*net.TCPConn
	onWait atomic.Pointer[func()]

	wmu    sync.Mutex // orders writes with gathering
	gather *[]byte    // while gathering: what was gathered, in a buffer from gatherPool
}

// A Gatherer is a connection, typically the TCP connection under TLS,
// that can gather writes: Gather(true) has Write copy what it is given
// into a buffer, written out in one system call when the next write would
// not fit, and Gather(false) writes out what was gathered and stops. A TLS
// connection writes each record with a Write of its own, so a session
// writing 64 KiB of data makes four system calls; gathered, one, as the
// peer's read of it may be (on loopback a write of 16 KiB costs about 1.3
// times what a quarter of a write of 64 KiB does, and wakes the reader four
// times as often). Writes keep their order whatever the state. Gather
// returns the error of the write it did, if any; a gathered write's error
// comes with the next Write or Gather.
type Gatherer interface {
	Gather(on bool) error
}

// gatherSize holds four TLS records of 16 KiB with their overhead.
const gatherSize = 4 * (16<<10 + 256)

var gatherPool = sync.Pool{New: func() any { b := make([]byte, 0, gatherSize); return &b }}

// Gather turns gathering on or off (see [Gatherer]). The buffer is taken
// from a pool while gathering only.
func (c *WaitConn) Gather(on bool) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if on {
		if c.gather == nil {
			c.gather = gatherPool.Get().(*[]byte)
		}
		return nil
	}
	if c.gather == nil {
		return nil
	}
	err := c.flushLocked()
	gatherPool.Put(c.gather)
	c.gather = nil
	return err
}

// flushLocked writes out what was gathered.
func (c *WaitConn) flushLocked() error {
	b := *c.gather
	*c.gather = b[:0]
	if len(b) == 0 {
		return nil
	}
	_, err := c.TCPConn.Write(b)
	return err
}

// Write writes p, or while gathering copies it to be written later.
func (c *WaitConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.gather == nil {
		return c.TCPConn.Write(p)
	}
	if len(*c.gather)+len(p) > cap(*c.gather) {
		if err := c.flushLocked(); err != nil {
			return 0, err
		}
		if len(p) > cap(*c.gather) {
			return c.TCPConn.Write(p)
		}
	}
	*c.gather = append(*c.gather, p...)
	return len(p), nil
}

// ReadFrom copies r to c through Write, so that what it writes keeps its
// order with gathered writes (the TCP connection's own ReadFrom would write
// past them).
func (c *WaitConn) ReadFrom(r io.Reader) (int64, error) {
	return io.Copy(struct{ io.Writer }{c}, r)
}

// FindGatherer returns the connection under c (c, or the connection its
// NetConn method returns, and so on down) that is a [Gatherer], or nil.
func FindGatherer(c net.Conn) Gatherer {
	g, _ := under[Gatherer](c)
	return g
}

// under returns the first connection of type T found at c or under it,
// following NetConn methods.
func under[T any](c net.Conn) (T, bool) {
	for range 8 {
		if v, ok := c.(T); ok {
			return v, true
		}
		nc, ok := c.(interface{ NetConn() net.Conn })
		if !ok {
			break
		}
		c = nc.NetConn()
	}
	var zero T
	return zero, false
}

// NewWaitConn returns c as a [*WaitConn] if it is a TCP connection whose
// socket Read can look at (on Unix), and c itself otherwise.
func NewWaitConn(c net.Conn) net.Conn {
	if tc, ok := c.(*net.TCPConn); ok && canWaitConn {
		return &WaitConn{TCPConn: tc}
	}
	return c
}

// OnReadWait sets f, which Read calls (from the reading goroutine) when
// the socket has nothing to read, before it waits. f must not read from c.
func (c *WaitConn) OnReadWait(f func()) { c.onWait.Store(&f) }

// WaitRead waits until the connection has something to read, as a TCP
// connection's does (see [ReadWaiter]); it does not call the OnReadWait
// function.
func (c *WaitConn) WaitRead() bool { return waitSocket(c.TCPConn) }

// SetOnReadWait has the connection under c (c, or the connection its
// NetConn method returns, and so on down) call f before a Read waits for
// bytes, if it is a [*WaitConn], and reports whether it is.
func SetOnReadWait(c net.Conn, f func()) bool {
	wc, ok := under[*WaitConn](c)
	if ok {
		wc.OnReadWait(f)
	}
	return ok
}
