package transport

import "net"

// A ReadWaiter is a conn that can wait until it has something to read
// while holding no buffer: [Splice] then lends its big buffer to a read
// only once there is data for it, and a quiet conn holds none.
type ReadWaiter interface {
	// WaitRead returns once a Read would not block: bytes have come, the
	// peer has ended or reset, the conn failed, or its read deadline
	// passed. It returns false if it could not wait (a Read must then be
	// ready to block).
	WaitRead() bool
}

// WaitRead waits until c has something to read, as [ReadWaiter] does: c's
// own WaitRead, or for a TCP connection a poll of its socket. It returns
// false if c offers neither.
func WaitRead(c net.Conn) bool {
	if wait := waiter(c); wait != nil {
		return wait()
	}
	return false
}

// waiter returns how WaitRead waits for c, or nil if it cannot.
func waiter(c net.Conn) func() bool {
	switch c := c.(type) {
	case ReadWaiter:
		return c.WaitRead
	case *net.TCPConn:
		return func() bool { return waitSocket(c) }
	}
	return nil
}
