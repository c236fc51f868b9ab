//go:build unix

package transport

import "syscall"

// waitSocket waits, in the runtime's poller as a Read would, until c's
// socket has bytes (or an end, or an error) to read: a peek of one byte
// that does not block, then the poller's wait if there was none. A
// failure of the wait (a closed conn, a passed deadline) is the next
// Read's to report.
func waitSocket(c syscall.Conn) bool {
	rc, err := c.SyscallConn()
	if err != nil {
		return false
	}
	var one [1]byte
	rc.Read(func(fd uintptr) bool {
		_, _, err := syscall.Recvfrom(int(fd), one[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		return err != syscall.EAGAIN && err != syscall.EWOULDBLOCK
	})
	return true
}
