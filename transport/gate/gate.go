// Package gate lets a stream's Reads wait for something that must come
// first (the relay's reply to an MTProxy app's stream, the HTTP/3 response
// header of a QUIC stream) while still honouring the stream's read
// deadline, as a Read blocked in the network would. It does no I/O.
package gate

import (
	"os"
	"sync"
	"time"
)

// A Gate is closed until [Gate.Open]. It is safe for concurrent use. Make
// one with [New].
type Gate struct {
	open     chan struct{}
	openOnce sync.Once
	err      error // set before open is closed

	mu       sync.Mutex
	deadline time.Time
	changed  chan struct{} // closed (and replaced) when deadline changes
}

// New returns a closed gate.
func New() *Gate {
	return &Gate{open: make(chan struct{}), changed: make(chan struct{})}
}

// Open opens the gate; Wait then returns err. Only the first call counts.
func (g *Gate) Open(err error) {
	g.openOnce.Do(func() {
		g.err = err
		close(g.open)
	})
}

// Opened is closed once the gate is open.
func (g *Gate) Opened() <-chan struct{} { return g.open }

// SetDeadline sets the read deadline that Wait honours (the zero time
// means none) and wakes a waiting Wait to look at it.
func (g *Gate) SetDeadline(t time.Time) {
	g.mu.Lock()
	g.deadline = t
	close(g.changed)
	g.changed = make(chan struct{})
	g.mu.Unlock()
}

// Wait waits until the gate opens and returns the error it was opened
// with, or returns os.ErrDeadlineExceeded once the deadline has passed.
func (g *Gate) Wait() error {
	for {
		select {
		case <-g.open:
			return g.err
		default:
		}
		g.mu.Lock()
		dl, changed := g.deadline, g.changed
		g.mu.Unlock()
		var expire <-chan time.Time
		if !dl.IsZero() {
			d := time.Until(dl)
			if d <= 0 {
				return os.ErrDeadlineExceeded
			}
			t := time.NewTimer(d)
			defer t.Stop()
			expire = t.C
		}
		select {
		case <-g.open:
		case <-changed:
		case <-expire:
			return os.ErrDeadlineExceeded
		}
	}
}
