package access

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/merpati/merpati/transport/auth"
	"github.com/merpati/merpati/transport/mtproxy"
)

// A Keyring is the live set of access keys of a running relay. It reloads
// the keys file when it changes ([Keyring.Watch]) or when asked
// ([Keyring.Reload], for SIGHUP), and closes the sessions of keys that
// disappeared or expired. Other keys' sessions are never touched.
//
// A Keyring is safe for concurrent use.
type Keyring struct {
	path      string
	usagePath string
	log       *slog.Logger

	snap atomic.Pointer[snapshot]

	mu    sync.Mutex // serializes reloads; guards users and stat
	users map[string]*User
	stat  fileStamp
}

type snapshot struct {
	users []*User
	keys  []auth.Key // keys[i] belongs to users[i]
	// mt holds the MTProxy secrets, mtUsers[i] owning mt[i]; keys
	// without one are left out.
	mt      []mtproxy.Key
	mtUsers []*User
}

type fileStamp struct {
	mod  time.Time
	size int64
}

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

// NewKeyring loads the keys file at path. usagePath, if not empty, is where
// byte counts are kept across restarts. A nil logger discards.
func NewKeyring(path, usagePath string, log *slog.Logger) (*Keyring, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	k := &Keyring{path: path, usagePath: usagePath, log: log, users: make(map[string]*User)}
	if usagePath != "" {
		if b, err := os.ReadFile(usagePath); err == nil {
			var used map[string]int64
			if json.Unmarshal(b, &used) == nil {
				for name, n := range used {
					u := &User{}
					u.used.Store(n)
					k.users[name] = u
				}
			}
		}
	}
	if _, err := k.Reload(); err != nil {
		return nil, err
	}
	return k, nil
}

// Reload re-reads the keys file. Keys that were removed are revoked: their
// sessions are closed. It reports how many keys are now active.
func (k *Keyring) Reload() (int, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if fi, err := os.Stat(k.path); err == nil {
		k.stat = fileStamp{fi.ModTime(), fi.Size()}
	}
	entries, err := Load(k.path)
	if err != nil {
		return 0, err // keep the keys we had: a half-edited file must not lock everyone out
	}
	snap := &snapshot{}
	keep := make(map[string]bool)
	for i := range entries {
		e := entries[i]
		u := k.users[e.Name]
		if u == nil || u.isRevoked() || (u.entry.Load() != nil && u.entry.Load().Key != e.Key) {
			if u != nil {
				u.revoke() // a replaced key: old sessions end
			}
			nu := &User{}
			if u != nil {
				nu.used.Store(u.used.Load())
			}
			u = nu
			k.users[e.Name] = u
		}
		u.entry.Store(&e)
		keep[e.Name] = true
		snap.users = append(snap.users, u)
		snap.keys = append(snap.keys, e.Key)
		if !e.MTProxySecret.IsZero() {
			snap.mt = append(snap.mt, e.MTProxySecret)
			snap.mtUsers = append(snap.mtUsers, u)
		}
	}
	for name, u := range k.users {
		if !keep[name] {
			if u.entry.Load() != nil && !u.isRevoked() {
				k.log.Info("access key revoked", "key", name)
			}
			u.revoke()
			if u.entry.Load() != nil {
				delete(k.users, name)
			}
		}
	}
	k.snap.Store(snap)
	return len(snap.users), nil
}

// Watch polls the keys file every interval and reloads it when its
// modification time or size changes; it also saves usage. It returns when
// ctx is done, after a last save.
func (k *Keyring) Watch(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	lastSave := time.Now()
	for {
		select {
		case <-ctx.Done():
			k.saveUsage()
			return
		case <-t.C:
		}
		fi, err := os.Stat(k.path)
		k.mu.Lock()
		changed := err == nil && (fileStamp{fi.ModTime(), fi.Size()}) != k.stat
		k.mu.Unlock()
		if changed {
			if n, err := k.Reload(); err != nil {
				k.log.Warn("keys file not reloaded", "err", err)
			} else {
				k.log.Info("keys reloaded", "keys", n)
			}
		}
		if time.Since(lastSave) >= 30*time.Second {
			k.saveUsage()
			lastSave = time.Now()
		}
	}
}

// Usage returns the bytes relayed per key name, for active keys.
func (k *Keyring) Usage() map[string]int64 {
	out := make(map[string]int64)
	for _, u := range k.snap.Load().users {
		out[u.Entry().Name] = u.used.Load()
	}
	return out
}

func (k *Keyring) saveUsage() {
	if k.usagePath == "" {
		return
	}
	b, _ := json.Marshal(k.Usage())
	if err := WriteFileAtomic(k.usagePath, b, 0o600); err != nil {
		k.log.Warn("usage not saved", "err", err)
	}
}

// LoadUsage reads the usage file a relay keeps (bytes per key name). A
// missing file is empty usage.
func LoadUsage(path string) (map[string]int64, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return map[string]int64{}, nil
	}
	if err != nil {
		return nil, err
	}
	var used map[string]int64
	if err := json.Unmarshal(b, &used); err != nil {
		return nil, fmt.Errorf("parse usage %s: %w", path, err)
	}
	return used, nil
}

// Authenticate returns the user whose key made token for a hello with the
// given digest, or nil if none did, or if that key has expired.
func (k *Keyring) Authenticate(digest [32]byte, token []byte, now time.Time) *User {
	s := k.snap.Load()
	i := auth.Match(s.keys, digest, token, now)
	if i < 0 {
		return nil
	}
	u := s.users[i]
	if e := u.Entry(); e.Expired(now) {
		return nil
	}
	return u
}

// MatchMTProxy returns the user whose MTProxy secret signed the FakeTLS
// hello h, and that secret's key, or nil if none did, if the hello's
// timestamp is more than window away from now, or if that key has
// expired. It costs one HMAC over the hello per key with an MTProxy
// secret. Replays are the caller's to catch.
func (k *Keyring) MatchMTProxy(h *mtproxy.ClientHello, now time.Time, window time.Duration) (*User, mtproxy.Key) {
	s := k.snap.Load()
	for i, key := range s.mt {
		if err := h.Verify(key, now, window); err == nil {
			u := s.mtUsers[i]
			if u.Entry().Expired(now) {
				return nil, mtproxy.Key{}
			}
			return u, key
		}
	}
	return nil, mtproxy.Key{}
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
