package acceptloop

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// scriptedListener returns the errors in errs from its first Accepts,
// then accepts from the real listener.
type scriptedListener struct {
	net.Listener
	errs []error
	n    atomic.Int32
}

func (l *scriptedListener) Accept() (net.Conn, error) {
	if i := int(l.n.Add(1)) - 1; i < len(l.errs) {
		return nil, l.errs[i]
	}
	return l.Listener.Accept()
}

func listen(t *testing.T, errs ...error) *scriptedListener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return &scriptedListener{Listener: ln, errs: errs}
}

func emfile() error {
	return &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", syscall.EMFILE)}
}

// TestTemporaryErrorsRetried: EMFILE from Accept pauses the loop, which
// then serves connections; the handler's connection is closed when ctx
// ends, and Serve returns nil.
func TestTemporaryErrorsRetried(t *testing.T) {
	ln := listen(t, emfile(), emfile(), emfile())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	handled := make(chan struct{})
	go func() {
		done <- Serve(ctx, ln, nil, func(ctx context.Context, conn net.Conn) {
			close(handled)
			io.Copy(io.Discard, conn) // returns when Serve closes conn
		})
	}()
	c, err := net.DialTimeout("tcp", ln.Addr().String(), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	select {
	case <-handled:
	case err := <-done:
		t.Fatalf("Serve returned on a temporary error: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("connection not handled")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Serve: %v", err)
	}
	// Serve closed the connection it accepted: the client reads EOF.
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Errorf("connection after Serve returned: %v, want EOF", err)
	}
}

// TestPermanentErrorReturned: any other Accept error ends Serve with it,
// and closes the listener.
func TestPermanentErrorReturned(t *testing.T) {
	bad := errors.New("listener broke")
	ln := listen(t, bad)
	err := Serve(context.Background(), ln, nil, func(context.Context, net.Conn) {})
	if !errors.Is(err, bad) {
		t.Fatalf("Serve: %v, want %v", err, bad)
	}
	if _, err := ln.Listener.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("listener not closed: %v", err)
	}
}

// TestKeep: a connection whose handler called Keep stays open after the
// handler returns, one whose handler did not is closed, and the loop's
// end closes a kept connection not yet released.
func TestKeep(t *testing.T) {
	ln := listen(t)
	ctx, cancel := context.WithCancel(context.Background())
	kept := make(chan net.Conn, 2)
	done := make(chan error, 1)
	go func() {
		done <- Serve(ctx, ln, nil, func(ctx context.Context, conn net.Conn) {
			var b [1]byte
			if _, err := io.ReadFull(conn, b[:]); err != nil {
				return
			}
			if b[0] == 'k' {
				if _, ok := Keep(ctx); !ok {
					t.Error("Keep: not a Serve context")
				}
				kept <- conn
			}
		})
	}()
	dial := func(b byte) net.Conn {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.Write([]byte{b})
		return c
	}
	closed := func(c net.Conn) bool {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err := c.Read(make([]byte, 1))
		return err == io.EOF
	}
	if !closed(dial('x')) {
		t.Error("a connection whose handler returned without Keep is open")
	}
	c := dial('k')
	sc := <-kept
	if _, err := sc.Write([]byte("y")); err != nil {
		t.Fatalf("kept connection, written after its handler returned: %v", err)
	}
	var b [1]byte
	if _, err := io.ReadFull(c, b[:]); err != nil || b[0] != 'y' {
		t.Fatalf("read %q, %v", b[:], err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if !closed(c) {
		t.Error("the loop's end left a kept connection open")
	}
	if _, ok := Keep(context.Background()); ok {
		t.Error("Keep reported a context not from Serve as one")
	}
}
