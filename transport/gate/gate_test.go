package gate

import (
	"errors"
	"os"
	"testing"
	"time"
)

func TestGate(t *testing.T) {
	g := New()
	g.SetDeadline(time.Now().Add(-time.Second))
	if err := g.Wait(); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("past deadline: %v", err)
	}
	// A Wait with no deadline is woken by a new deadline.
	g.SetDeadline(time.Time{})
	done := make(chan error, 1)
	go func() { done <- g.Wait() }()
	time.Sleep(10 * time.Millisecond)
	g.SetDeadline(time.Now())
	select {
	case err := <-done:
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("deadline set to now: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Wait did not notice the new deadline")
	}
	g.SetDeadline(time.Time{})
	go func() { done <- g.Wait() }()
	want := errors.New("refused")
	g.Open(want)
	g.Open(nil) // only the first counts
	if err := <-done; err != want {
		t.Fatalf("Wait after Open: %v", err)
	}
	g.SetDeadline(time.Now().Add(-time.Second))
	if err := g.Wait(); err != want {
		t.Fatalf("an open gate ignores the deadline: %v", err)
	}
}
