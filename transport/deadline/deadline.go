// Package deadline gives a stream's Reads net.Conn deadline semantics while
// they wait on a channel rather than in the network: for the relay's reply
// to an MTProxy app's stream, or for data a QUIC stream's reader goroutine
// has read. It does no I/O.
package deadline

import (
	"fmt"
	"net"
	"os"
	"sync"
	"time"
)

// A Deadline is a settable point in time that [Recv] honours, like a
// net.Conn's read deadline: setting it wakes a waiting Recv, and clearing
// it (the zero time) lets later waits block again. It is safe for
// concurrent use. The zero value is not usable; make one with [New].
type Deadline struct {
	mu      sync.Mutex
	t       time.Time
	changed chan struct{} // closed (and replaced) when t changes
}

// New returns a Deadline that is not set.
func New() *Deadline { return &Deadline{changed: make(chan struct{})} }

// Set sets the deadline; the zero time means none.
func (d *Deadline) Set(t time.Time) {
	d.mu.Lock()
	d.t = t
	close(d.changed)
	d.changed = make(chan struct{})
	d.mu.Unlock()
}

// Recv receives from ch. Once the deadline has passed it returns
// os.ErrDeadlineExceeded instead, at once if ch has nothing ready, and once
// done is closed (nil means never) an error wrapping net.ErrClosed. A
// closed ch gives T's zero value, as a receive does.
func Recv[T any](d *Deadline, ch <-chan T, done <-chan struct{}) (T, error) {
	var zero T
	for {
		select {
		case v := <-ch:
			return v, nil
		default:
		}
		select {
		case <-done:
			return zero, fmt.Errorf("read: %w", net.ErrClosed)
		default:
		}
		d.mu.Lock()
		t, changed := d.t, d.changed
		d.mu.Unlock()
		var expire <-chan time.Time
		if !t.IsZero() {
			left := time.Until(t)
			if left <= 0 {
				return zero, os.ErrDeadlineExceeded
			}
			timer := time.NewTimer(left)
			defer timer.Stop()
			expire = timer.C
		}
		select {
		case v := <-ch:
			return v, nil
		case <-changed:
		case <-done:
		case <-expire:
			return zero, os.ErrDeadlineExceeded
		}
	}
}
