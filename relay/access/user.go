package access

import (
	"io"
	"sync"
	"sync/atomic"
)

// A User is the live state of one access key: its usage, its open streams
// and sessions.
type User struct {
	entry   atomic.Pointer[Entry]
	used    atomic.Int64
	streams atomic.Int64

	mu       sync.Mutex
	revoked  bool
	sessions map[io.Closer]struct{}
}

// Entry returns the user's current key entry.
func (u *User) Entry() *Entry { return u.entry.Load() }

// Name returns the name of the user's key.
func (u *User) Name() string { return u.Entry().Name }

// Track registers a session authenticated by u, to be closed if the key is
// revoked. It returns a function that unregisters it, and false if the key
// is already revoked (the caller must then close the session itself).
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
// if the key is at its MaxConns limit.
func (u *User) AcquireStream() bool {
	max := int64(u.Entry().MaxConns)
	n := u.streams.Add(1)
	if max > 0 && n > max {
		u.streams.Add(-1)
		return false
	}
	return true
}

// ReleaseStream undoes one successful AcquireStream.
func (u *User) ReleaseStream() { u.streams.Add(-1) }
