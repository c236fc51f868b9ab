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
	// MaxConns caps concurrent streams; zero means no cap.
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
)

var nameRE = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)

// ValidName reports whether name can name a key.
func ValidName(name string) bool { return nameRE.MatchString(name) }

// Load reads a keys file. A missing file is an empty key list. Unknown
// fields, duplicate names or keys, and invalid entries are errors.
func Load(path string) ([]Entry, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read keys: %w", err)
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
		case e.QuotaBytes < 0 || e.MaxConns < 0:
			return nil, fmt.Errorf("keys %s entry %q: negative limit", path, e.Name)
		case !e.MTProxySecret.IsZero() && mtkeys[e.MTProxySecret]:
			return nil, fmt.Errorf("keys %s entry %q: MTProxy secret shared with another entry", path, e.Name)
		}
		names[e.Name], keys[e.Key], mtkeys[e.MTProxySecret] = true, true, true
	}
	return f.Keys, nil
}

// Save writes entries to path atomically (write to a temporary file, then
// rename) with mode 0600.
func Save(path string, entries []Entry) error {
	if entries == nil {
		entries = []Entry{}
	}
	b, err := json.MarshalIndent(file{Keys: entries}, "", "  ")
	if err != nil {
		return err
	}
	return WriteFileAtomic(path, append(b, '\n'), 0o600)
}

// WriteFileAtomic writes data to a temporary file beside path and renames
// it over path, so readers see the old or the new content, never a mix.
func WriteFileAtomic(path string, data []byte, perm os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(perm); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// Add creates a key named name in the keys file at path and returns it.
// The entry's limits, and its MTProxy secret if not zero, come from limits;
// the key, the creation time and (when limits has none) a random MTProxy
// secret are new.
func Add(path, name string, limits Entry) (Entry, error) {
	if !ValidName(name) {
		return Entry{}, ErrName
	}
	entries, err := Load(path)
	if err != nil {
		return Entry{}, err
	}
	for _, e := range entries {
		if e.Name == name {
			return Entry{}, fmt.Errorf("%w: %s", ErrExists, name)
		}
		if !limits.MTProxySecret.IsZero() && e.MTProxySecret == limits.MTProxySecret {
			return Entry{}, fmt.Errorf("access: MTProxy secret already used by key %q", e.Name)
		}
	}
	e := limits
	e.Name, e.Key, e.Created = name, auth.NewKey(), time.Now().UTC().Truncate(time.Second)
	if e.MTProxySecret.IsZero() {
		e.MTProxySecret = mtproxy.NewKey()
	}
	if err := Save(path, append(entries, e)); err != nil {
		return Entry{}, err
	}
	return e, nil
}

// Revoke removes the key named name from the keys file at path. A running
// relay drops it, and closes its sessions, at its next reload.
func Revoke(path, name string) error {
	entries, err := Load(path)
	if err != nil {
		return err
	}
	for i, e := range entries {
		if e.Name == name {
			return Save(path, append(entries[:i:i], entries[i+1:]...))
		}
	}
	return fmt.Errorf("%w: %s", ErrNotFound, name)
}
