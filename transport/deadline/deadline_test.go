package deadline

import (
	"errors"
	"net"
	"os"
	"testing"
	"time"
)

func TestRecv(t *testing.T) {
	d := New()
	ch := make(chan int, 1)
	d.Set(time.Now().Add(-time.Second))
	if _, err := Recv(d, ch, nil); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("past deadline: %v", err)
	}
	// Something ready wins over a past deadline.
	ch <- 1
	if v, err := Recv(d, ch, nil); v != 1 || err != nil {
		t.Fatalf("ready value: %v, %v", v, err)
	}
	// A wait with no deadline is woken by a new one.
	d.Set(time.Time{})
	done := make(chan error, 1)
	go func() { _, err := Recv(d, ch, nil); done <- err }()
	time.Sleep(10 * time.Millisecond)
	d.Set(time.Now())
	select {
	case err := <-done:
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("deadline set to now: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Recv did not notice the new deadline")
	}
	// Cleared: the next value arrives.
	d.Set(time.Time{})
	go func() { v, err := Recv(d, ch, nil); done <- err; _ = v }()
	ch <- 2
	if err := <-done; err != nil {
		t.Fatalf("after clearing: %v", err)
	}
	close(ch)
	if v, err := Recv(d, ch, nil); v != 0 || err != nil {
		t.Fatalf("closed channel: %v, %v", v, err)
	}
}

func TestRecvDone(t *testing.T) {
	d := New()
	done := make(chan struct{})
	errc := make(chan error, 1)
	go func() { _, err := Recv(d, make(chan int), done); errc <- err }()
	time.Sleep(10 * time.Millisecond)
	close(done)
	select {
	case err := <-errc:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("done closed: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Recv did not notice done")
	}
}
