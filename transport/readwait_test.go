//go:build unix

package transport

import (
	"errors"
	"io"
	"os"
	"testing"
	"time"
)

// TestWaitRead: on a TCP conn, WaitRead returns once bytes have come
// (and leaves them for the Read), once the peer has closed (the Read then
// gives EOF), and once the read deadline has passed (the Read then gives
// the timeout); it does not return while nothing has happened.
func TestWaitRead(t *testing.T) {
	t.Run("data", func(t *testing.T) {
		a, b := tcpPair(t)
		defer a.Close()
		defer b.Close()
		done := make(chan bool, 1)
		go func() { done <- WaitRead(b) }()
		select {
		case <-done:
			t.Fatal("WaitRead returned with nothing to read")
		case <-time.After(100 * time.Millisecond):
		}
		a.Write([]byte("x"))
		if ok := <-done; !ok {
			t.Fatal("WaitRead could not wait on a TCP conn")
		}
		var buf [4]byte
		if n, err := b.Read(buf[:]); n != 1 || buf[0] != 'x' || err != nil {
			t.Fatalf("the read after WaitRead: %q, %v", buf[:n], err)
		}
	})
	t.Run("close", func(t *testing.T) {
		a, b := tcpPair(t)
		defer b.Close()
		done := make(chan bool, 1)
		go func() { done <- WaitRead(b) }()
		a.Close()
		<-done
		if _, err := b.Read(make([]byte, 4)); err != io.EOF {
			t.Fatalf("the read after the peer closed: %v", err)
		}
	})
	t.Run("deadline", func(t *testing.T) {
		a, b := tcpPair(t)
		defer a.Close()
		defer b.Close()
		b.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		WaitRead(b)
		if _, err := b.Read(make([]byte, 4)); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("the read after the deadline: %v", err)
		}
	})
}
