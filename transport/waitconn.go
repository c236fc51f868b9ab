package transport

import (
	"net"
	"sync/atomic"
)

// A WaitConn is a TCP connection that calls a function each time a Read is
// about to wait for bytes (see [NewWaitConn]). A reader that hands what it
// reads to others in batches, such as a multiplexed session's read loop
// waking the readers of its streams, hands them on then, once the socket
// is drained, rather than after each read.
type WaitConn struct {
	*net.TCPConn
	onWait atomic.Pointer[func()]
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
	for range 8 {
		switch v := c.(type) {
		case *WaitConn:
			v.OnReadWait(f)
			return true
		case interface{ NetConn() net.Conn }:
			c = v.NetConn()
		default:
			return false
		}
	}
	return false
}
