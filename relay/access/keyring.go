package access

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/merpati/merpati/transport/atomicfile"
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
	// byID indexes keys by [auth.KeyID], for sealed tokens.
	byID map[uint32][]int
	// mt holds the MTProxy secrets, mtUsers[i] owning mt[i]; keys
	// without one are left out.
	mt      []mtproxy.Key
	mtUsers []*User
	// mtPrep[i] is mt[i] prepared for checking hellos.
	mtPrep []*mtproxy.PreparedKey
}

type fileStamp struct {
	mod  time.Time
	size int64
}

// UsageSaveInterval is how often a watching [Keyring] saves changed usage
// ([Keyring.Watch]): a relay killed outright (kill -9, power loss) loses
// at most this much of its counting. It also saves when it stops.
const UsageSaveInterval = 5 * time.Second

// NewKeyring loads the keys file at path. usagePath, if not empty, is where
// byte counts are kept across restarts. A nil logger discards.
//
// A missing keys file, or one with no keys, is loaded as no keys (the relay
// then serves nobody), with an error logged that says how to add one.
// Temporary files left by killed writers of either file are removed.
func NewKeyring(path, usagePath string, log *slog.Logger) (*Keyring, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	k := &Keyring{path: path, usagePath: usagePath, log: log, users: make(map[string]*User)}
	if unlock, err := LockFile(path); err == nil {
		atomicfile.RemoveStale(path)
		if usagePath != "" {
			atomicfile.RemoveStale(usagePath)
		}
		unlock()
	} else {
		log.Warn("stale temporary files not removed", "err", err)
	}
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
	n, err := k.reload(true)
	if err != nil {
		return nil, err
	}
	if n == 0 {
		log.Error("no access keys: this relay serves nobody; add one with: merpati-relay link add NAME --dir DIR",
			"keys_file", path)
	}
	return k, nil
}

// Reload re-reads the keys file. Keys that were removed are revoked: their
// sessions are closed. It reports how many keys are now active.
//
// A missing or empty file (zero bytes, as a crashed editor or a mistaken
// "> keys.json" leaves) is refused with an error and the loaded keys stay
// in force: revoking everyone takes a file that says so, {"keys": []},
// which is what revoking the last key writes. So does a file that does not
// parse.
func (k *Keyring) Reload() (int, error) { return k.reload(false) }

func (k *Keyring) reload(initial bool) (int, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if fi, err := os.Stat(k.path); err == nil {
		k.stat = fileStamp{fi.ModTime(), fi.Size()}
	}
	entries, err := load(k.path)
	if initial && (errors.Is(err, os.ErrNotExist) || errors.Is(err, ErrEmptyFile)) {
		entries, err = nil, nil
	}
	if err != nil {
		// Keep the keys we had: a half-edited or deleted file must not
		// lock everyone out.
		return 0, fmt.Errorf("%w; keeping the %d keys loaded", err, k.active())
	}
	snap := &snapshot{byID: make(map[uint32][]int, len(entries))}
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
		id := auth.KeyID(e.Key)
		snap.byID[id] = append(snap.byID[id], len(snap.keys))
		snap.users = append(snap.users, u)
		snap.keys = append(snap.keys, e.Key)
		if !e.MTProxySecret.IsZero() {
			snap.mt = append(snap.mt, e.MTProxySecret)
			snap.mtPrep = append(snap.mtPrep, e.MTProxySecret.Prepare())
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
	if !initial && len(snap.users) == 0 && k.active() > 0 {
		k.log.Error("keys file has no keys: every key revoked, this relay now serves nobody", "keys_file", k.path)
	}
	k.snap.Store(snap)
	return len(snap.users), nil
}

// active returns the number of keys in force.
func (k *Keyring) active() int {
	if s := k.snap.Load(); s != nil {
		return len(s.users)
	}
	return 0
}

// Watch polls the keys file every interval and reloads it when its
// modification time or size changes, and saves usage every
// [UsageSaveInterval] when it changed. It returns when ctx is done, after
// a last save: to keep every byte counted, cancel ctx only once the
// sessions have ended.
func (k *Keyring) Watch(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	lastSave := time.Now()
	var saved map[string]int64 // what the last save wrote; nil: none yet
	missing := false
	for {
		select {
		case <-ctx.Done():
			k.saveUsage()
			return
		case <-t.C:
		}
		fi, err := os.Stat(k.path)
		if errors.Is(err, os.ErrNotExist) {
			if !missing {
				k.log.Error("keys file missing; keeping the keys loaded (restore it, or revoke keys with merpati-relay link revoke)",
					"keys_file", k.path, "keys", k.active())
			}
			missing = true
		} else {
			missing = false
		}
		k.mu.Lock()
		changed := err == nil && (fileStamp{fi.ModTime(), fi.Size()}) != k.stat
		k.mu.Unlock()
		if changed {
			if n, err := k.Reload(); err != nil {
				k.log.Error("keys file not reloaded", "err", err)
			} else {
				k.log.Info("keys reloaded", "keys", n)
			}
		}
		if time.Since(lastSave) >= UsageSaveInterval {
			if now := k.Usage(); !maps.Equal(now, saved) {
				k.saveUsage()
				saved = now
			}
			lastSave = time.Now()
		}
	}
}

// Len returns the number of keys in force.
func (k *Keyring) Len() int { return k.active() }

// MTProxySecrets returns how many keys have an MTProxy secret: each costs
// an HMAC over every FakeTLS-shaped hello (apps name no secret).
func (k *Keyring) MTProxySecrets() int { return len(k.snap.Load().mt) }

// Usage returns the bytes relayed per key name, for active keys.
func (k *Keyring) Usage() map[string]int64 {
	out := make(map[string]int64)
	for _, u := range k.snap.Load().users {
		out[u.Entry().Name] = u.used.Load()
	}
	return out
}

// saveUsage writes the usage file under the keys file's lock, the lock
// every writer of the relay directory's key state takes.
func (k *Keyring) saveUsage() {
	if k.usagePath == "" {
		return
	}
	b, err := json.Marshal(k.Usage())
	if err != nil {
		k.log.Error("usage not saved", "err", err)
		return
	}
	if unlock, err := LockFile(k.path); err != nil {
		k.log.Warn("saving usage without the keys file's lock", "err", err)
	} else {
		defer unlock()
		atomicfile.RemoveStale(k.usagePath)
	}
	if err := atomicfile.Write(k.usagePath, b, 0o600); err != nil {
		k.log.Error("usage not saved", "err", err)
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

// AuthenticateID is [Keyring.Authenticate] for a sealed token, whose key
// id names the key (see [auth.Open]): it checks only the keys with that
// id, so that its cost does not grow with the number of keys.
func (k *Keyring) AuthenticateID(id uint32, digest [32]byte, token []byte, now time.Time) *User {
	s := k.snap.Load()
	for _, i := range s.byID[id] {
		if auth.Match(s.keys[i:i+1], digest, token, now) < 0 {
			continue
		}
		u := s.users[i]
		if u.Entry().Expired(now) {
			return nil
		}
		return u
	}
	return nil
}

// MatchMTProxy returns the user whose MTProxy secret signed the FakeTLS
// hello h, and that secret's key, or nil if none did, if the hello's
// timestamp is more than window away from now, or if that key has
// expired. It costs one HMAC over the hello per key with an MTProxy
// secret. Replays are the caller's to catch.
func (k *Keyring) MatchMTProxy(h *mtproxy.ClientHello, now time.Time, window time.Duration) (*User, mtproxy.Key) {
	s := k.snap.Load()
	for i, key := range s.mt {
		if err := h.VerifyPrepared(s.mtPrep[i], now, window); err == nil {
			u := s.mtUsers[i]
			if u.Entry().Expired(now) {
				return nil, mtproxy.Key{}
			}
			return u, key
		}
	}
	return nil, mtproxy.Key{}
}
