package access

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
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
