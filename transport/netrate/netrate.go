// Package netrate rate-limits work per client network: the relay's front
// door uses it to bound the CPU that hellos from one network can cost
// (MTProxy mode checks a hello against every secret, since apps give no
// hint of theirs).
package netrate

import (
	"hash/maphash"
	"net/netip"
	"sync"
	"time"
)

// buckets is the number of token buckets networks are hashed into: memory
// stays at 512 KiB however many addresses, spoofed ones included, ask.
const buckets = 1 << 15

// A Limiter gives each client network (an IPv4 address cut to /24, an
// IPv6 one to /56) a token bucket of Rate tokens per second and a burst of
// Burst. Networks are hashed with a secret seed into a fixed number of
// buckets; networks that share one share its rate. It is safe for
// concurrent use.
type Limiter struct {
	rate, burst float64
	seed        maphash.Seed

	mu sync.Mutex
	b  [buckets]bucket
}

type bucket struct {
	tokens float64
	last   int64 // UnixNano of the last refill; 0 means never used (full)
}

// New returns a Limiter of rate tokens per second per network with a
// burst of burst.
func New(rate, burst float64) *Limiter {
	return &Limiter{rate: rate, burst: burst, seed: maphash.MakeSeed()}
}

// Network returns the network a is counted in.
func Network(a netip.Addr) netip.Prefix {
	a = a.Unmap()
	bits := 56
	if a.Is4() {
		bits = 24
	}
	p, _ := a.Prefix(bits)
	return p
}

// Allow takes a token from the bucket of a's network at time now and
// reports whether there was one.
func (l *Limiter) Allow(a netip.Addr, now time.Time) bool {
	p := Network(a)
	var h maphash.Hash
	h.SetSeed(l.seed)
	b := p.Addr().As16()
	h.Write(b[:])
	h.WriteByte(byte(p.Bits()))
	i := h.Sum64() % buckets
	t := now.UnixNano()

	l.mu.Lock()
	defer l.mu.Unlock()
	bk := &l.b[i]
	if bk.last == 0 {
		bk.tokens = l.burst
	} else if d := t - bk.last; d > 0 {
		bk.tokens = min(l.burst, bk.tokens+l.rate*float64(d)/1e9)
	}
	bk.last = t
	if bk.tokens < 1 {
		return false
	}
	bk.tokens--
	return true
}
