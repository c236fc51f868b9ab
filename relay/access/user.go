package access

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
)

// Limits of a key whose entry sets none. They apply to every key: a key
// cannot be made unlimited, only given higher limits.
//
// A merpati client keeps one session to a relay (two for a moment while it
// races carriers or replaces a dead one) and a Telegram app some 10 to 30
// connections, so the defaults leave room for a family sharing a key and
// for sessions a relay has not yet noticed are dead. They also bound what
// one key can take from a relay: an idle session costs about 100-200 KiB
// (64 sessions: some 12 MiB), an open stream about 90 KiB, two goroutines
// and a file descriptor (1024 streams: some 90 MiB and 1024 descriptors).
// DefaultMaxStreams is no lower so that one client may keep a thousand
// connections, as a busy SOCKS5 front can.
const (
	DefaultMaxSessions = 64
	DefaultMaxStreams  = 1024
)

// Errors about a key's limits.
var (
	// ErrRevoked means the key has been revoked or replaced.
	ErrRevoked = errors.New("access: key revoked")
	// ErrTooManySessions means the key already has as many sessions as
	// its session limit allows.
	ErrTooManySessions = errors.New("access: key at its session limit")
	// ErrTooManyStreams means the key already has as many streams as its
	// stream limit allows.
	ErrTooManyStreams = errors.New("access: key at its stream limit")
	// ErrOverQuota means the key has used up its byte quota.
	ErrOverQuota = errors.New("access: key over its byte quota")
)

// SessionLimit returns the most concurrent sessions e allows: MaxSessions,
// or [DefaultMaxSessions] when that is not set.
func (e *Entry) SessionLimit() int {
	if e.MaxSessions > 0 {
		return e.MaxSessions
	}
	return DefaultMaxSessions
}

// StreamLimit returns the most concurrent streams e allows: MaxStreams,
// else MaxConns (its former name), else [DefaultMaxStreams].
func (e *Entry) StreamLimit() int {
	switch {
	case e.MaxStreams > 0:
		return e.MaxStreams
	case e.MaxConns > 0:
		return e.MaxConns
	}
	return DefaultMaxStreams
}

// A User is the live state of one access key: its usage, its open streams
// and sessions.
type User struct {
	entry   atomic.Pointer[Entry]
	used    atomic.Int64
	streams atomic.Int64

	mu        sync.Mutex
	revoked   bool
	sessions  map[io.Closer]struct{} // sessions and MTProxy connections, closed on revocation
	nsessions int                    // how many of them are sessions (TrackSession)
	dials     chan struct{}          // one token per stream dialing; made by the first AcquireDial
}

// Entry returns the user's current key entry.
func (u *User) Entry() *Entry { return u.entry.Load() }

// Name returns the name of the user's key.
func (u *User) Name() string { return u.Entry().Name }

// Track registers a connection authenticated by u, to be closed if the key
// is revoked, without counting it as a session (a direct MTProxy
// connection counts as a stream instead). It returns a function that
// unregisters it, and false if the key is already revoked (the caller must
// then close the connection itself).
func (u *User) Track(c io.Closer) (untrack func(), ok bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.revoked {
		return func() {}, false
	}
	if u.sessions == nil {
		u.sessions = make(map[io.Closer]struct{})
	}
	u.sessions[c] = struct{}{}
	return func() {
		u.mu.Lock()
		delete(u.sessions, c)
		u.mu.Unlock()
	}, true
}

// TrackSession registers a carrier session authenticated by u: it counts
// against the key's session limit ([Entry.SessionLimit]) and is closed if
// the key is revoked. It returns a function that unregisters it, to be
// called once when the session ends. It fails, registering nothing, with
// an error wrapping [ErrTooManySessions] when the key is at its limit and
// [ErrRevoked] when it is revoked; the caller then closes the session
// itself. Lowering a key's limit closes no session: it refuses new ones
// until enough have ended.
func (u *User) TrackSession(c io.Closer) (untrack func(), err error) {
	limit := u.Entry().SessionLimit()
	u.mu.Lock()
	defer u.mu.Unlock()
	switch {
	case u.revoked:
		return nil, ErrRevoked
	case u.nsessions >= limit:
		return nil, fmt.Errorf("%w (%d)", ErrTooManySessions, limit)
	}
	if u.sessions == nil {
		u.sessions = make(map[io.Closer]struct{})
	}
	u.sessions[c] = struct{}{}
	u.nsessions++
	var once sync.Once
	return func() {
		once.Do(func() {
			u.mu.Lock()
			delete(u.sessions, c)
			u.nsessions--
			u.mu.Unlock()
		})
	}, nil
}

// Sessions returns how many sessions of the key are registered with
// [User.TrackSession].
func (u *User) Sessions() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.nsessions
}

func (u *User) isRevoked() bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.revoked
}

func (u *User) revoke() {
	u.mu.Lock()
	u.revoked = true
	sessions := u.sessions
	u.sessions = nil
	u.mu.Unlock()
	for c := range sessions {
		c.Close()
	}
}

// Revoked reports whether the user's key has been revoked.
func (u *User) Revoked() bool { return u.isRevoked() }

// AddBytes counts n relayed bytes against the key's quota.
func (u *User) AddBytes(n int64) { u.used.Add(n) }

// Used returns the bytes relayed for this key.
func (u *User) Used() int64 { return u.used.Load() }

// OverQuota reports whether the key has used up its byte quota.
func (u *User) OverQuota() bool {
	q := u.Entry().QuotaBytes
	return q > 0 && u.used.Load() >= q
}

// AcquireStream counts a new stream and reports false (counting nothing)
// if the key is at its stream limit ([Entry.StreamLimit]).
func (u *User) AcquireStream() bool {
	limit := int64(u.Entry().StreamLimit())
	if n := u.streams.Add(1); n > limit {
		u.streams.Add(-1)
		return false
	}
	return true
}

// ReleaseStream undoes one successful AcquireStream.
func (u *User) ReleaseStream() { u.streams.Add(-1) }

// Streams returns how many streams of the key are counted.
func (u *User) Streams() int { return int(u.streams.Load()) }

// AcquireDial waits until fewer than limit of the key's streams are
// dialing, then counts one more, or returns an error wrapping ctx's once
// ctx is done. Every call on one User must pass the same limit (a relay's
// setting, not a key's); the first call fixes it. Each successful call
// must be matched by one [User.ReleaseDial].
func (u *User) AcquireDial(ctx context.Context, limit int) error {
	u.mu.Lock()
	if u.dials == nil {
		u.dials = make(chan struct{}, max(limit, 1))
	}
	dials := u.dials
	u.mu.Unlock()
	select {
	case dials <- struct{}{}:
		return nil
	default:
	}
	select {
	case dials <- struct{}{}:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("access: wait for a dial slot: %w", ctx.Err())
	}
}

// ReleaseDial ends one dial counted by [User.AcquireDial].
func (u *User) ReleaseDial() {
	u.mu.Lock()
	dials := u.dials
	u.mu.Unlock()
	<-dials
}
