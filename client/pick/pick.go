// Package pick chooses how the client reaches a relay: it holds the
// candidates (one per relay and carrier, in the link's order), keeps one
// live session, and when that session dies, moves on to the next candidate
// that works.
//
// Today it tries candidates in order; the carrier race (QUIC first, TCP
// after a short delay) will live here too.
package pick

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/merpati/merpati/transport"
)

// A Candidate is one way to reach one relay.
type Candidate struct {
	// Relay is the relay's "host:port", for logs and status.
	Relay string
	// Dialer opens sessions over one carrier.
	Dialer transport.Dialer
}

// Config configures a [Picker].
type Config struct {
	// Candidates in order of preference. At least one is required.
	Candidates []Candidate
	// AttemptTimeout bounds each dial; zero means 10 seconds.
	AttemptTimeout time.Duration
	// Logger receives session changes; nil discards.
	Logger *slog.Logger
}

// An Active is the session in use and where it goes.
type Active struct {
	Session transport.Session
	Relay   string
	Carrier string
	Since   time.Time
	index   int
}

// A Picker hands out the current session, dialing when there is none. It
// is safe for concurrent use.
type Picker struct {
	cfg Config
	log *slog.Logger

	mu      sync.Mutex
	cur     *Active
	dialing chan struct{} // closed when the dial in progress ends
	dialErr error
	next    int // candidate to try first
	closed  bool
}

// ErrClosed is returned by a closed Picker.
var ErrClosed = errors.New("pick: closed")

// New checks cfg and returns a Picker. It dials nothing yet.
func New(cfg Config) (*Picker, error) {
	if len(cfg.Candidates) == 0 {
		return nil, errors.New("pick: Config.Candidates: at least one required")
	}
	if cfg.AttemptTimeout <= 0 {
		cfg.AttemptTimeout = 10 * time.Second
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Picker{cfg: cfg, log: log}, nil
}

// Session returns the live session, dialing one if needed. Concurrent
// callers share one dial.
func (p *Picker) Session(ctx context.Context) (*Active, error) {
	for {
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return nil, ErrClosed
		}
		if a := p.cur; a != nil {
			select {
			case <-a.Session.Done():
				p.log.Info("session lost", "relay", a.Relay, "transport", a.Carrier, "err", a.Session.Err())
				p.cur = nil
				p.next = a.index + 1
			default:
				p.mu.Unlock()
				return a, nil
			}
		}
		if p.dialing == nil {
			p.dialing = make(chan struct{})
			go p.dial(p.next)
		}
		wait := p.dialing
		p.mu.Unlock()
		select {
		case <-wait:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		p.mu.Lock()
		err := p.dialErr
		got := p.cur
		p.mu.Unlock()
		if got == nil && err != nil {
			return nil, err
		}
	}
}

// dial tries every candidate once, starting at first.
func (p *Picker) dial(first int) {
	var errs []error
	p.mu.Lock()
	cands := append([]Candidate(nil), p.cfg.Candidates...)
	p.mu.Unlock()
	n := len(cands)
	first %= n
	var won *Active
	for i := range n {
		idx := (first + i) % n
		c := cands[idx]
		ctx, cancel := context.WithTimeout(context.Background(), p.cfg.AttemptTimeout)
		start := time.Now()
		s, err := c.Dialer.Dial(ctx)
		cancel()
		if err != nil {
			p.log.Warn("relay unreachable", "relay", c.Relay, "transport", c.Dialer.Carrier(), "err", err)
			errs = append(errs, err)
			continue
		}
		p.log.Info("session up", "relay", c.Relay, "transport", c.Dialer.Carrier(), "handshake", time.Since(start).Round(time.Millisecond))
		won = &Active{Session: s, Relay: c.Relay, Carrier: c.Dialer.Carrier(), Since: time.Now(), index: idx}
		break
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed && won != nil {
		won.Session.Close()
		won = nil
	}
	p.cur = won
	p.dialErr = nil
	if won == nil {
		p.dialErr = fmt.Errorf("no relay reachable: %w", errors.Join(errs...))
	}
	close(p.dialing)
	p.dialing = nil
}

// Fail reports that a's session is broken (a stream could not be opened
// on it). The session is closed and the next call to Session dials the
// next candidate.
func (p *Picker) Fail(a *Active, err error) {
	p.mu.Lock()
	if p.cur == a {
		p.log.Info("session failed", "relay", a.Relay, "transport", a.Carrier, "err", err)
		p.cur = nil
		p.next = a.index + 1
	}
	p.mu.Unlock()
	a.Session.Close()
}

// AddCandidates appends candidates (for example relays learned from a
// bootstrap list) that are not already known by Relay and carrier. They are
// tried after the existing ones. It reports how many were added.
func (p *Picker) AddCandidates(cands ...Candidate) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, c := range cands {
		dup := false
		for _, old := range p.cfg.Candidates {
			if old.Relay == c.Relay && old.Dialer.Carrier() == c.Dialer.Carrier() {
				dup = true
				break
			}
		}
		if !dup {
			p.cfg.Candidates = append(p.cfg.Candidates, c)
			n++
		}
	}
	return n
}

// Current returns the live session, or nil, without dialing.
func (p *Picker) Current() *Active {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cur
}

// Close closes the current session; later calls to Session fail.
func (p *Picker) Close() error {
	p.mu.Lock()
	p.closed = true
	a := p.cur
	p.cur = nil
	p.mu.Unlock()
	if a != nil {
		a.Session.Close()
	}
	return nil
}
