package client

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/merpati/merpati/client/bootstrap"
	"github.com/merpati/merpati/client/pick"
	"github.com/merpati/merpati/transport/link"
	"github.com/merpati/merpati/transport/relaylist"
)

// ErrNoBootstrap is returned by [Client.Refresh] when the link has no
// bootstrap domains, list key or bootstrap key, or the Config no
// resolvers. A link of the old format (dns= and lk= without bk=) also
// wraps [link.ErrOldBootstrap].
var ErrNoBootstrap = errors.New("client: bootstrap not configured (link dns=, lk= and bk=, and resolvers, are needed)")

// booter runs the bootstrap for a client: at most one fetch at a time,
// and automatic fetches spaced by a jittered exponential backoff
// (bootstrap.Backoff: 30 s doubling up to 30 min) while they find
// nothing new, so that a client whose relays are all down neither hammers
// the resolvers nor repeats its queries at a fixed interval.
type booter struct {
	f       *bootstrap.Fetcher
	backoff bootstrap.Backoff

	mu      sync.Mutex
	running chan struct{} // closed when the fetch in progress ends
	added   int           // candidates added by the last fetch
}

// initBootstrap sets c.boot, unless the link or Config do not allow a
// bootstrap, and adds the relays of a valid cached list to the picker.
func (c *Client) initBootstrap() error {
	l := c.cfg.Link
	if err := l.CheckBootstrap(); err != nil {
		if errors.Is(err, link.ErrOldBootstrap) {
			c.log.Warn("DNS bootstrap off", "err", err)
		}
		return nil
	}
	if len(c.cfg.Resolvers) == 0 {
		return nil
	}
	f, err := bootstrap.New(bootstrap.Config{
		Domains:     l.Bootstrap,
		ListKey:     ed25519.PublicKey(l.ListKey),
		Keys:        l.BootstrapKeys,
		Resolvers:   c.cfg.Resolvers,
		CachePath:   c.cfg.ListCache,
		DialContext: c.cfg.DialContext,
		Logger:      c.log,
	})
	if err != nil {
		return fmt.Errorf("client: %w", err)
	}
	c.boot = &booter{f: f}
	if cached := f.Cached(); cached != nil {
		n := c.picker.AddCandidates(c.listCandidates(cached)...)
		c.log.Info("relays from cached list", "seq", cached.Seq, "added", n)
	}
	return nil
}

// Refresh fetches the bootstrap relay list now and adds its relays to the
// ones the client tries. It reports how many relay/carrier pairs were new.
func (c *Client) Refresh(ctx context.Context) (*relaylist.List, int, error) {
	if c.boot == nil {
		if err := c.cfg.Link.CheckBootstrap(); errors.Is(err, link.ErrOldBootstrap) {
			return nil, 0, fmt.Errorf("%w: %w", ErrNoBootstrap, err)
		}
		return nil, 0, ErrNoBootstrap
	}
	return c.fetchList(ctx)
}

func (c *Client) fetchList(ctx context.Context) (*relaylist.List, int, error) {
	l, err := c.boot.f.Fetch(ctx)
	if err != nil {
		return nil, 0, err
	}
	n := c.picker.AddCandidates(c.listCandidates(l)...)
	c.log.Info("relays learned over DNS", "seq", l.Seq, "entries", len(l.Entries), "added", n)
	return l, n, nil
}

// bootstrapAfter is how long OpenStream waits for a session before it
// fetches the relay list in the background: a relay that has not answered
// in two seconds is likely blocked, and relays learned meanwhile join the
// race at once instead of after every known relay has timed out.
const bootstrapAfter = 2 * time.Second

// session returns the picker's session, starting the bootstrap in the
// background when none comes up within bootstrapAfter.
func (c *Client) session(ctx context.Context) (*pick.Active, error) {
	if c.boot == nil || c.picker.Current() != nil {
		return c.picker.Session(ctx)
	}
	t := time.AfterFunc(bootstrapAfter, func() { c.rescue(context.Background()) })
	defer t.Stop()
	return c.picker.Session(ctx)
}

// rescue is called when no known relay works. It runs the bootstrap
// unless the backoff says to wait (concurrent callers share one fetch),
// and reports whether new relays were added, so the caller should try
// again.
func (c *Client) rescue(ctx context.Context) bool {
	b := c.boot
	if b == nil {
		return false
	}
	b.mu.Lock()
	wait := b.running
	if wait == nil {
		start := time.Now()
		if !b.backoff.Allow(start) {
			b.mu.Unlock()
			return false
		}
		b.running = make(chan struct{})
		wait = b.running
		b.mu.Unlock()
		// The fetch outlives one caller's context: the others wait on
		// it too.
		go func() {
			fctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			_, n, err := c.fetchList(fctx)
			if err != nil {
				c.log.Warn("bootstrap failed", "err", err, "next_after", b.backoff.Failed(start).Round(time.Second))
			} else if n == 0 {
				c.log.Info("bootstrap found no new relay", "took", time.Since(start).Round(time.Millisecond),
					"next_after", b.backoff.Failed(start).Round(time.Second))
			} else {
				b.backoff.Succeeded(start)
				c.log.Info("bootstrap done", "added", n, "took", time.Since(start).Round(time.Millisecond))
			}
			b.mu.Lock()
			b.added = n
			close(b.running)
			b.running = nil
			b.mu.Unlock()
		}()
	} else {
		b.mu.Unlock()
	}
	select {
	case <-wait:
	case <-ctx.Done():
		return false
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.added > 0
}

// listCandidates turns the entries of l into candidates, one per relay
// address and carrier this client speaks.
func (c *Client) listCandidates(l *relaylist.List) []pick.Candidate {
	var cands []pick.Candidate
	for _, e := range l.Entries {
		el := e.Link()
		for _, relay := range el.Relays {
			for _, carrier := range el.CarrierList() {
				d, err := dialerFor(el, relay, carrier, c.cfg.DialContext, c.log)
				if err != nil {
					c.log.Warn("relay from list skipped", "relay", relay, "transport", carrier, "err", err)
					continue
				}
				if d == nil {
					continue
				}
				cands = append(cands, pick.Candidate{Relay: relay, Dialer: d})
			}
		}
	}
	return cands
}
