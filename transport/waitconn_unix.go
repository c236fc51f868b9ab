//go:build unix

package transport

import (
	"io"
	"net"
	"syscall"
)

const canWaitConn = true

// Read reads as a TCP connection's Read does, calling the OnReadWait
// function before it waits for bytes.
func (c *WaitConn) Read(p []byte) (int, error) {
	fp := c.onWait.Load()
	if fp == nil || len(p) == 0 {
		return c.TCPConn.Read(p)
	}
	rc, err := c.SyscallConn()
	if err != nil {
		return c.TCPConn.Read(p)
	}
	var n int
	var rerr error
	called := false
	err = rc.Read(func(fd uintptr) bool {
		for {
			n, rerr = syscall.Read(int(fd), p)
			if rerr != syscall.EINTR {
				break
			}
		}
		if rerr != syscall.EAGAIN && rerr != syscall.EWOULDBLOCK {
			return true
		}
		if !called {
			called = true
			(*fp)()
		}
		return false // the runtime's poller waits, then calls again
	})
	switch {
	case err != nil: // the wait failed: closed, or past the deadline
		return 0, err
	case rerr != nil:
		return 0, &net.OpError{Op: "read", Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: rerr}
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// WriteNow writes b to rc's socket without waiting, and returns how many
// bytes the socket took: none when it is full, or on any error (a later
// write reports it).
func WriteNow(rc syscall.RawConn, b []byte) int {
	n := 0
	rc.Write(func(fd uintptr) bool {
		var err error
		for {
			n, err = syscall.Write(int(fd), b)
			if err != syscall.EINTR {
				break
			}
		}
		if err != nil {
			n = 0
		}
		return true // never wait
	})
	return n
}
