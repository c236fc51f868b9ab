package relay

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/merpati/merpati/transport/h2mux"
	"github.com/merpati/merpati/transport/tlscarrier"
)

// The cover site's idle close, which TLS-carrier sessions follow: a
// censor who watches a browser's idle connections to the cover site end
// after 75 s (nginx's default) and a relay's after 64 s can tell them
// apart.
const (
	// idleRelearn is how often [Relay.Run] learns the cover site's idle
	// close again (a server's settings change), idleRetry how soon after
	// a failure, and idleCoverPoll how often it looks whether the cover
	// site has changed (a reload), which it learns at once.
	idleRelearn   = 6 * time.Hour
	idleRetry     = 10 * time.Minute
	idleCoverPoll = time.Minute
	// minIdleClose is the shortest idle close the relay follows: a
	// cover site that closes its connections right after the response
	// (keep-alive off) would have clients reconnect for every stream.
	minIdleClose = time.Second
)

// IdleTimeout returns how long a TLS-carrier session may stay without
// streams before the relay closes it (give or take 2 %), and where that
// comes from: "setting" (Config.IdleTimeout), "cover site" (learned, see
// [Relay.LearnIdle]) or "default" ([h2mux.DefaultIdleTimeout]: not learned
// yet, or the cover site keeps idle connections open).
func (r *Relay) IdleTimeout() (time.Duration, string) {
	if d := time.Duration(r.idleFixed.Load()); d > 0 {
		return d, "setting"
	}
	if d := time.Duration(r.idleLearned.Load()); d > 0 {
		return d, "cover site"
	}
	return h2mux.DefaultIdleTimeout, "default"
}

// sessionIdle is the TLS carrier's [h2mux.Config.IdleTimeoutFunc]: zero
// leaves h2mux's default.
func (r *Relay) sessionIdle() time.Duration {
	if d := r.idleFixed.Load(); d > 0 {
		return time.Duration(d)
	}
	return time.Duration(r.idleLearned.Load())
}

// LearnIdle learns how long the cover site in force keeps a browser's idle
// HTTP/2 connection open ([tlscarrier.LearnIdleClose]: a page loaded as
// Chromium loads it, then silence; twice, and the two must agree), which TLS-carrier sessions without
// streams then wait before the relay closes them, as the cover site would.
// It takes twice as long as the cover site waits (nginx: 75 s), at most
// twice [tlscarrier.MaxIdleWait]; when the cover site has not closed by then,
// sessions close after [h2mux.DefaultIdleTimeout]. A failure keeps the
// value last learned. Config.IdleTimeout, when set, takes precedence.
// [Relay.Run] calls it in the background at start and keeps it fresh.
func (r *Relay) LearnIdle(ctx context.Context) error {
	live := r.live.Load()
	if live.serverName == "" {
		return errors.New("relay: learn the cover site's idle close: Config.ServerName: required")
	}
	d, err := learnIdleTwice(ctx, live.cover, live.serverName)
	if cur := r.live.Load(); cur.cover != live.cover || cur.serverName != live.serverName {
		return errors.New("relay: the cover site changed while its idle close was learned")
	}
	switch {
	case errors.Is(err, tlscarrier.ErrNoIdleClose):
		r.idleLearned.Store(0)
		r.log.Info("the cover site kept an idle connection open for "+tlscarrier.MaxIdleWait.String()+
			": idle sessions close after the default", "idle_timeout", h2mux.DefaultIdleTimeout)
		return nil
	case err != nil:
		r.log.Warn("cover site's idle close not learned: idle sessions keep closing after the last value", "err", err)
		return err
	case d < minIdleClose:
		r.log.Warn("the cover site closes idle connections at once: idle sessions close after "+minIdleClose.String(), "cover_idle", d)
		d = minIdleClose
	}
	r.idleLearned.Store(int64(d))
	in, from := r.IdleTimeout()
	r.log.Info("cover site's idle close learned", "cover_idle", d.Round(time.Millisecond), "idle_timeout", in.Round(time.Millisecond), "from", from)
	return nil
}

// learnIdleTwice learns the cover site's idle close twice in a row and
// returns it if both agree (within idleAgree): a connection that ends
// because the cover site restarted, or a middlebox dropped it, is not an
// idle close.
func learnIdleTwice(ctx context.Context, cover, serverName string) (time.Duration, error) {
	d1, err := tlscarrier.LearnIdleClose(ctx, cover, serverName, tlscarrier.MaxIdleWait)
	if err != nil {
		return 0, err
	}
	d2, err := tlscarrier.LearnIdleClose(ctx, cover, serverName, tlscarrier.MaxIdleWait)
	switch {
	case errors.Is(err, tlscarrier.ErrNoIdleClose):
		return 0, fmt.Errorf("the cover site closed one idle connection after %v and kept the next open", d1.Round(time.Millisecond))
	case err != nil:
		return 0, err
	case max(d1, d2)-min(d1, d2) > max(idleAgreeMin, max(d1, d2)/idleAgreeFrac):
		return 0, fmt.Errorf("the cover site closed two idle connections after %v and %v", d1.Round(time.Millisecond), d2.Round(time.Millisecond))
	}
	return max(d1, d2), nil
}

// Two idle closes of the cover site agree when they differ by at most
// idleAgreeMin or 1/idleAgreeFrac of the longer.
const (
	idleAgreeMin  = time.Second
	idleAgreeFrac = 10
)

// keepIdleLearned learns the cover site's idle close until ctx is done:
// at once, every idleRelearn (idleRetry after a failure), and as soon as
// the cover site changes. It learns nothing while Config.IdleTimeout is
// set, nor without a server name.
func (r *Relay) keepIdleLearned(ctx context.Context) {
	var cover, name string // the cover site last learned
	var next time.Time
	for {
		live := r.live.Load()
		changed := live.cover != cover || live.serverName != name
		if r.idleFixed.Load() == 0 && live.serverName != "" && (changed || !time.Now().Before(next)) {
			cover, name = live.cover, live.serverName
			next = time.Now().Add(idleRelearn)
			if err := r.LearnIdle(ctx); err != nil {
				if ctx.Err() != nil {
					return
				}
				next = time.Now().Add(idleRetry)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(idleCoverPoll):
		}
	}
}
