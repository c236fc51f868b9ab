// Package antireplay remembers the authentication tokens a server has
// accepted, so that a captured hello cannot be replayed while its token is
// still within the time window: the relay keeps one [Cache] for carrier
// tokens and one for MTProxy hellos, and the client's local MTProxy front
// one for the hellos its apps send.
//
// It owns only the remembering. Checking a token, and choosing a TTL
// longer than the window in which a token verifies, are the caller's.
package antireplay

import (
	"sync"
	"time"
)

// DefaultTTL is the TTL of a zero Cache.
const DefaultTTL = 5 * time.Minute

// DefaultMaxEntries bounds each generation of a zero Cache.
const DefaultMaxEntries = 1 << 20

// A Cache is a set of recently seen tokens. Entries live at least TTL and at
// most 2×TTL: the cache keeps two generations and drops the older one when
// the newer is TTL old.
//
// Only tokens that already passed authentication should be added, so the
// cache grows with legitimate connections, not with a prober's garbage. If a
// generation still fills up (MaxEntries), it is rotated early, which can
// shorten an entry's life below TTL; the bound keeps memory finite when a key
// holder floods the relay.
//
// The zero value is ready to use with DefaultTTL and DefaultMaxEntries. A
// Cache is safe for concurrent use.
type Cache struct {
	// TTL is how long an entry is at least remembered.
	TTL time.Duration
	// MaxEntries bounds the size of each generation.
	MaxEntries int
	// Now returns the current time; nil means time.Now.
	Now func() time.Time

	mu        sync.Mutex
	cur, prev map[[16]byte]struct{}
	started   time.Time
}

// Seen records token and reports whether it had been recorded before (a
// replay). Only the first 16 bytes of token are kept.
func (c *Cache) Seen(token []byte) bool {
	var k [16]byte
	copy(k[:], token)
	now := time.Now
	if c.Now != nil {
		now = c.Now
	}
	ttl := c.TTL
	if ttl <= 0 {
		ttl = DefaultTTL
	}
	limit := c.MaxEntries
	if limit <= 0 {
		limit = DefaultMaxEntries
	}
	t := now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cur == nil {
		c.cur, c.started = make(map[[16]byte]struct{}), t
	}
	if t.Sub(c.started) >= 2*ttl {
		c.prev, c.cur, c.started = nil, make(map[[16]byte]struct{}), t
	} else if t.Sub(c.started) >= ttl || len(c.cur) >= limit {
		c.prev, c.cur, c.started = c.cur, make(map[[16]byte]struct{}), t
	}
	if _, ok := c.cur[k]; ok {
		return true
	}
	if _, ok := c.prev[k]; ok {
		return true
	}
	c.cur[k] = struct{}{}
	return false
}
