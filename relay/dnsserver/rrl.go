package dnsserver

import (
	"hash/maphash"
	"net/netip"
	"sync"
	"time"
)

// Response rate limiting defaults (see [Config.RateLimit]). They follow
// BIND's RRL: 20 responses per second and network, every second limited
// response slipped as a truncated one, IPv4 networks of /24 and IPv6 ones
// of /56.
const (
	DefaultRateLimit = 20
	DefaultSlip      = 2
	rrlBits4         = 24
	rrlBits6         = 56
	// rrlBuckets is the number of token buckets networks are hashed
	// into: memory stays at 768 KiB however many addresses (spoofed ones
	// included) send queries.
	rrlBuckets = 1 << 15
)

// A limiter rate-limits UDP responses per client network, so that the
// server cannot be used to amplify floods at a spoofed address: a 63-byte
// query draws a reply of about 900 bytes. Each network (the requester's
// address cut to /24 or /56) is hashed, with a secret seed, into one of
// rrlBuckets token buckets of rate tokens per second and a burst of one
// second's worth; networks that share a bucket share its rate. A response
// the bucket has no token for is dropped, except every slip-th one, which
// is replaced by a truncated answer without records, no larger than the
// query, so that a real resolver behind that network retries over TCP,
// which is not limited (a spoofed source cannot complete a TCP
// handshake).
type limiter struct {
	rate   float64
	slip   int
	exempt []netip.Prefix
	seed   maphash.Seed

	mu      sync.Mutex
	buckets [rrlBuckets]rrlBucket
	// limited counts limited responses since the last log line.
	limited   int
	lastLog   time.Time
	logPeriod time.Duration
}

type rrlBucket struct {
	tokens float64
	last   int64 // UnixNano of the last refill; 0 means never used (full)
	drops  uint32
}

// verdict is what to do with one response.
type verdict int

const (
	verdictSend verdict = iota // send the full answer
	verdictSlip                // send a truncated, empty answer
	verdictDrop                // send nothing
)

func newLimiter(rate, slipEvery int, exempt []netip.Prefix) *limiter {
	return &limiter{rate: float64(rate), slip: slipEvery, exempt: exempt, seed: maphash.MakeSeed(), logPeriod: time.Minute}
}

// check spends a token of addr's network at now and says what to send.
func (l *limiter) check(addr netip.Addr, now time.Time) verdict {
	addr = addr.Unmap()
	for _, p := range l.exempt {
		if p.Contains(addr) {
			return verdictSend
		}
	}
	bits := rrlBits4
	if addr.Is6() {
		bits = rrlBits6
	}
	net, err := addr.Prefix(bits)
	if err != nil {
		return verdictSend // an invalid address: no network to limit
	}
	key, _ := net.MarshalBinary()
	b := &l.buckets[maphash.Bytes(l.seed, key)%rrlBuckets]
	t := now.UnixNano()

	l.mu.Lock()
	defer l.mu.Unlock()
	if b.last == 0 {
		b.tokens = l.rate
	} else if t > b.last {
		b.tokens = min(l.rate, b.tokens+float64(t-b.last)/float64(time.Second)*l.rate)
	}
	b.last = t
	if b.tokens >= 1 {
		b.tokens--
		b.drops = 0
		return verdictSend
	}
	l.limited++
	b.drops++
	if l.slip > 0 && b.drops%uint32(l.slip) == 0 {
		return verdictSlip
	}
	return verdictDrop
}

// report returns how many responses were limited since its last non-zero
// report, at most once per logPeriod.
func (l *limiter) report(now time.Time) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.limited == 0 || now.Sub(l.lastLog) < l.logPeriod {
		return 0
	}
	n := l.limited
	l.limited, l.lastLog = 0, now
	return n
}
