// Package access keeps a relay's per-person access keys: the keys file the
// operator edits with `merpati-relay link`, and the live [Keyring] a running
// relay authenticates against and reloads when the file changes.
//
// Each person gets a named key of their own, so one can be revoked, or given
// a quota, without touching anyone else's.
package access

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"time"

	"github.com/merpati/merpati/transport/atomicfile"
	"github.com/merpati/merpati/transport/auth"
	"github.com/merpati/merpati/transport/mtproxy"
)

// An Entry is one person's access key and its limits.
type Entry struct {
	// Name identifies the person to the operator ("alice", "family-2").
	Name string `json:"name"`
	// Key is the secret carried in the person's share link.
	Key auth.Key `json:"key"`
	// Created is when the key was made.
	Created time.Time `json:"created"`
	// QuotaBytes caps the bytes relayed for this key (both directions);
	// zero means no cap.
	QuotaBytes int64 `json:"quota_bytes,omitempty"`
	// MaxSessions caps the key's concurrent carrier sessions (TLS or
	// QUIC connections that authenticated with it); zero means
	// [DefaultMaxSessions]. A session over the cap is refused.
	MaxSessions int `json:"max_sessions,omitempty"`
	// MaxStreams caps the key's concurrent streams (each a Telegram
	// connection, direct MTProxy connections included), counted from the
	// moment a stream opens; zero means MaxConns if that is set, else
	// [DefaultMaxStreams].
	MaxStreams int `json:"max_streams,omitempty"`
	// MaxConns is the former name of MaxStreams (it always capped
	// streams, not connections), still honoured when MaxStreams is zero.
	// New keys set MaxStreams instead.
	MaxConns int `json:"max_conns,omitempty"`
	// Expires, if set, is when the key stops working.
	Expires time.Time `json:"expires,omitzero"`
	// MTProxySecret is the key of this person's FakeTLS MTProxy secret
	// (the "ee" secret of their tg://proxy link, with the relay's cover
	// host name), so that stock Telegram apps can use the relay directly.
	// Zero means the key has no MTProxy access. The same limits apply.
	MTProxySecret mtproxy.Key `json:"mtproxy_secret,omitzero"`
}

// Expired reports whether e has expired at now.
func (e *Entry) Expired(now time.Time) bool { return !e.Expires.IsZero() && !now.Before(e.Expires) }

type file struct {
	Keys []Entry `json:"keys"`
}

// Errors from this package.
var (
	// ErrName means a key name is not 1-64 letters, digits, '.', '_' or '-'.
	ErrName = errors.New("access: key name must be 1-64 of [A-Za-z0-9._-]")
	// ErrExists means a key with that name already exists.
	ErrExists = errors.New("access: key name already exists")
	// ErrNotFound means no key has that name.
	ErrNotFound = errors.New("access: no such key")
	// ErrEmptyFile means a keys file holds nothing at all, not even
	// {"keys": []}: a truncated file, which a running relay refuses to
	// reload.
	ErrEmptyFile = errors.New("access: keys file is empty")
)

var nameRE = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)

// ValidName reports whether name can name a key.
func ValidName(name string) bool { return nameRE.MatchString(name) }

// Load reads a keys file. A missing file is an empty key list (what init
// and a first `link add` start from). Unknown fields, duplicate names or
// keys, and invalid entries are errors.
func Load(path string) ([]Entry, error) {
	entries, err := load(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	return entries, err
}

// load is Load with a missing file an error wrapping [os.ErrNotExist].
func load(path string) ([]Entry, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read keys: %w", err)
	}
	if len(bytes.TrimSpace(b)) == 0 {
		return nil, fmt.Errorf("keys %s: %w", path, ErrEmptyFile)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var f file
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("parse keys %s: %w", path, err)
	}
	names := make(map[string]bool)
	keys := make(map[auth.Key]bool)
	mtkeys := make(map[mtproxy.Key]bool)
	for i, e := range f.Keys {
		switch {
		case !ValidName(e.Name):
			return nil, fmt.Errorf("keys %s entry %d: %w", path, i, ErrName)
		case e.Key.IsZero():
			return nil, fmt.Errorf("keys %s entry %q: missing key", path, e.Name)
		case names[e.Name]:
			return nil, fmt.Errorf("keys %s entry %q: %w", path, e.Name, ErrExists)
		case keys[e.Key]:
			return nil, fmt.Errorf("keys %s entry %q: key shared with another entry", path, e.Name)
		case e.QuotaBytes < 0 || e.MaxConns < 0 || e.MaxSessions < 0 || e.MaxStreams < 0:
			return nil, fmt.Errorf("keys %s entry %q: negative limit", path, e.Name)
		case !e.MTProxySecret.IsZero() && mtkeys[e.MTProxySecret]:
			return nil, fmt.Errorf("keys %s entry %q: MTProxy secret shared with another entry", path, e.Name)
		}
		names[e.Name], keys[e.Key], mtkeys[e.MTProxySecret] = true, true, true
	}
	return f.Keys, nil
}

// Save writes entries to path atomically (write to a temporary file, then
// rename) with mode 0600, under the file's lock (see [LockFile]). To
// change the keys, use [Update]: Save alone would overwrite what another
// process added since the entries were read.
func Save(path string, entries []Entry) error {
	unlock, err := LockFile(path)
	if err != nil {
		return err
	}
	defer unlock()
	atomicfile.RemoveStale(path)
	return save(path, entries)
}

// save is Save without the lock.
func save(path string, entries []Entry) error {
	if entries == nil {
		entries = []Entry{}
	}
	b, err := json.MarshalIndent(file{Keys: entries}, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(path, append(b, '\n'), 0o600)
}

// Update changes the keys file at path: it takes the file's lock (see
// [LockFile]), reads the entries (a missing file has none), and saves what
// edit returns, unless edit fails. So concurrent updates, from any number
// of processes, never lose each other's changes. It also removes the
// temporary files of writers that were killed mid-write.
func Update(path string, edit func([]Entry) ([]Entry, error)) error {
	unlock, err := LockFile(path)
	if err != nil {
		return err
	}
	defer unlock()
	atomicfile.RemoveStale(path)
	entries, err := Load(path)
	if err != nil {
		return err
	}
	entries, err = edit(entries)
	if err != nil {
		return err
	}
	return save(path, entries)
}

// lockWait bounds how long [LockFile] waits for another holder.
const lockWait = 30 * time.Second

// LockFile takes the exclusive lock that guards read-modify-writes of the
// file at path, waiting up to 30 seconds for another process or goroutine
// to release it, and returns the function that releases it. The lock is an
// advisory flock(2) on ".NAME.lock" beside the file (NAME being path's
// base name), which is left in place; the kernel releases it if the holder
// dies.
func LockFile(path string) (unlock func(), err error) {
	lp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".lock")
	f, err := os.OpenFile(lp, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	deadline := time.Now().Add(lockWait)
	for delay := time.Millisecond; ; delay = min(2*delay, 50*time.Millisecond) {
		ok, err := tryLock(f)
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		if ok {
			return func() { f.Close() }, nil // closing the file releases the lock
		}
		if time.Now().After(deadline) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %s held by another process for over %v", path, lp, lockWait)
		}
		time.Sleep(delay)
	}
}

// Add creates a key named name in the keys file at path and returns it.
// The entry's limits, and its MTProxy secret if not zero, come from limits;
// the key, the creation time and (when limits has none) a random MTProxy
// secret are new. It is safe to run concurrently with other changes to the
// file ([Update]).
func Add(path, name string, limits Entry) (Entry, error) {
	return add(path, name, limits, true)
}

// AddNoMTProxy is [Add] for a key without an MTProxy secret (unless
// limits has one): its person uses merpati's client only, and the relay
// spends nothing on checking app hellos against it.
func AddNoMTProxy(path, name string, limits Entry) (Entry, error) {
	return add(path, name, limits, false)
}

func add(path, name string, limits Entry, mt bool) (Entry, error) {
	if !ValidName(name) {
		return Entry{}, ErrName
	}
	e := limits
	e.Name, e.Key, e.Created = name, auth.NewKey(), time.Now().UTC().Truncate(time.Second)
	if e.MTProxySecret.IsZero() && mt {
		e.MTProxySecret = mtproxy.NewKey()
	}
	err := Update(path, func(entries []Entry) ([]Entry, error) {
		for _, o := range entries {
			if o.Name == name {
				return nil, fmt.Errorf("%w: %s", ErrExists, name)
			}
			if !e.MTProxySecret.IsZero() && o.MTProxySecret == e.MTProxySecret {
				return nil, fmt.Errorf("access: MTProxy secret already used by key %q", o.Name)
			}
		}
		return append(entries, e), nil
	})
	if err != nil {
		return Entry{}, err
	}
	return e, nil
}

// Revoke removes the key named name from the keys file at path. A running
// relay drops it, and closes its sessions, at its next reload. It is safe
// to run concurrently with other changes to the file ([Update]).
func Revoke(path, name string) error {
	return Update(path, func(entries []Entry) ([]Entry, error) {
		for i, e := range entries {
			if e.Name == name {
				return append(entries[:i:i], entries[i+1:]...), nil
			}
		}
		return nil, fmt.Errorf("%w: %s", ErrNotFound, name)
	})
}
