package bootstrap

import (
	"math/rand/v2"
	"sync"
	"time"
)

// Defaults of [Backoff].
const (
	// DefaultBackoffBase is the wait after the first failed fetch.
	DefaultBackoffBase = 30 * time.Second
	// DefaultBackoffCap is the longest wait between fetches.
	DefaultBackoffCap = 30 * time.Minute
)

// A Backoff spaces automatic bootstrap fetches while every relay stays
// blocked, so that neither resolvers nor an observer see a burst at a
// fixed interval: after the k-th failure in a row the next fetch may
// start after Base·2^(k-1), at most Cap, each wait drawn uniformly from
// half to all of that. A success resets it. The zero value uses
// [DefaultBackoffBase] and [DefaultBackoffCap]. It is safe for concurrent
// use.
type Backoff struct {
	// Base is the wait after the first failure; zero means
	// DefaultBackoffBase.
	Base time.Duration
	// Cap bounds the wait; zero means DefaultBackoffCap.
	Cap time.Duration
	// Rand returns a float in [0, 1); nil means math/rand/v2.
	Rand func() float64

	mu       sync.Mutex
	failures int
	next     time.Time // when the next fetch may start
}

// Allow reports whether a fetch may start at now.
func (b *Backoff) Allow(now time.Time) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return !now.Before(b.next)
}

// Failed records a failed fetch (or one that found nothing new) that
// started at start, and returns how long the next one must wait.
func (b *Backoff) Failed(start time.Time) time.Duration {
	b.mu.Lock()
	defer b.mu.Unlock()
	base, limit := b.Base, b.Cap
	if base <= 0 {
		base = DefaultBackoffBase
	}
	if limit <= 0 {
		limit = DefaultBackoffCap
	}
	d := base
	for range min(b.failures, 30) {
		if d >= limit {
			break
		}
		d *= 2
	}
	d = min(d, limit)
	rnd := rand.Float64
	if b.Rand != nil {
		rnd = b.Rand
	}
	d = d/2 + time.Duration(rnd()*float64(d/2))
	b.failures++
	b.next = start.Add(d)
	return d
}

// Succeeded records a fetch that brought new relays: the next failure
// waits Base again. A fetch may start again after Base/2 at the
// earliest, so that a list whose relays are all blocked too does not
// start a burst.
func (b *Backoff) Succeeded(start time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	base := b.Base
	if base <= 0 {
		base = DefaultBackoffBase
	}
	b.failures = 0
	b.next = start.Add(base / 2)
}
