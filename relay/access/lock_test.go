package access

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestConcurrentUpdates races adds against adds and revokes, as
// concurrent `merpati-relay link` runs do: no change may be lost.
func TestConcurrentUpdates(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keys.json")
	for i := range 10 {
		if _, err := Add(path, fmt.Sprintf("old%d", i), Entry{}); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Go(func() {
			if _, err := Add(path, fmt.Sprintf("new%d", i), Entry{}); err != nil {
				t.Error(err)
			}
		})
	}
	for i := range 10 {
		wg.Go(func() {
			if err := Revoke(path, fmt.Sprintf("old%d", i)); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	got, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, e := range got {
		names[e.Name] = true
	}
	for i := range 20 {
		if !names[fmt.Sprintf("new%d", i)] {
			t.Errorf("new%d lost", i)
		}
	}
	for i := range 10 {
		if names[fmt.Sprintf("old%d", i)] {
			t.Errorf("old%d revoked, yet back", i)
		}
	}
	if len(got) != 20 {
		t.Errorf("%d keys, want 20", len(got))
	}
}

// TestLockFileExcludes: an Add waits for the lock's holder.
func TestLockFileExcludes(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keys.json")
	unlock, err := LockFile(path)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { _, err := Add(path, "alice", Entry{}); done <- err }()
	select {
	case err := <-done:
		t.Fatalf("Add ran while another held the lock: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	unlock()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Add still waiting after the lock was released")
	}
}

// TestStaleTempsRemoved: the temporary files of killed writers, which may
// hold revoked keys, go at the next locked write and at relay start; an
// editor's swap file stays.
func TestStaleTempsRemoved(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "keys.json")
	usage := filepath.Join(dir, "usage.json")
	stale := []string{".keys.json.12345", ".keys.json.987"}
	keep := []string{".keys.json.swp", "keys.json.1", ".keys.json."}
	for _, n := range append(stale, keep...) {
		os.WriteFile(filepath.Join(dir, n), []byte(`{"keys":[]}`), 0o600)
	}
	if _, err := Add(path, "alice", Entry{}); err != nil {
		t.Fatal(err)
	}
	for _, n := range stale {
		if _, err := os.Stat(filepath.Join(dir, n)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left behind: %v", n, err)
		}
	}
	for _, n := range keep {
		if _, err := os.Stat(filepath.Join(dir, n)); err != nil {
			t.Errorf("%s removed: %v", n, err)
		}
	}
	os.WriteFile(filepath.Join(dir, ".keys.json.555"), nil, 0o600)
	os.WriteFile(filepath.Join(dir, ".usage.json.556"), nil, 0o600)
	if _, err := NewKeyring(path, usage, nil); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{".keys.json.555", ".usage.json.556"} {
		if _, err := os.Stat(filepath.Join(dir, n)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left behind at start: %v", n, err)
		}
	}
}

// logBuffer is a slog handler's output, safe for concurrent use.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func (l *logBuffer) logger() *slog.Logger { return slog.New(slog.NewTextHandler(l, nil)) }

// TestReloadKeepsKeysOnMissingOrEmptyFile: deleting or truncating the
// keys file and reloading (SIGHUP) must not revoke everyone; a file that
// says there are no keys does.
func TestReloadKeepsKeysOnMissingOrEmptyFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "keys.json")
	alice, _ := Add(path, "alice", Entry{})
	var logs logBuffer
	kr, err := NewKeyring(path, "", logs.logger())
	if err != nil {
		t.Fatal(err)
	}
	d, tok := token(t, alice)
	u := kr.Authenticate(d, tok, time.Now())
	if u == nil {
		t.Fatal("alice not authenticated")
	}
	sess := &closer{}
	u.Track(sess)

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { kr.Watch(ctx, 10*time.Millisecond) })
	defer func() { cancel(); wg.Wait() }()

	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if n, err := kr.Reload(); err == nil {
		t.Errorf("reload of a missing file accepted (%d keys)", n)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(logs.String(), "keys file missing") && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if !strings.Contains(logs.String(), "level=ERROR msg=\"keys file missing") {
		t.Errorf("a missing keys file was not reported:\n%s", logs.String())
	}
	os.WriteFile(path, nil, 0o600)
	if n, err := kr.Reload(); !errors.Is(err, ErrEmptyFile) {
		t.Errorf("reload of an empty file: %d keys, %v", n, err)
	}
	if kr.Authenticate(d, tok, time.Now()) != u || sess.closed.Load() {
		t.Fatal("alice lost her access to a missing or empty keys file")
	}

	if err := Save(path, nil); err != nil {
		t.Fatal(err)
	}
	if n, err := kr.Reload(); err != nil || n != 0 {
		t.Fatalf(`reload of {"keys": []}: %d keys, %v`, n, err)
	}
	if kr.Authenticate(d, tok, time.Now()) != nil || !sess.closed.Load() {
		t.Error(`{"keys": []} did not revoke alice`)
	}
	if !strings.Contains(logs.String(), "level=ERROR msg=\"keys file has no keys") {
		t.Errorf("revoking every key was not reported:\n%s", logs.String())
	}
}

// TestNoKeysAtStartLogged: a relay that starts with no keys says so.
func TestNoKeysAtStartLogged(t *testing.T) {
	dir := t.TempDir()
	for name, body := range map[string]*string{"missing": nil, "empty list": ptr(`{"keys": []}`)} {
		path := filepath.Join(dir, strings.ReplaceAll(name, " ", "-")+".json")
		if body != nil {
			os.WriteFile(path, []byte(*body), 0o600)
		}
		var logs logBuffer
		if _, err := NewKeyring(path, "", logs.logger()); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !strings.Contains(logs.String(), "level=ERROR msg=\"no access keys") {
			t.Errorf("%s: no error logged:\n%s", name, logs.String())
		}
	}
}

func ptr[T any](v T) *T { return &v }

// TestUsageSavedWhileRunning: usage reaches the disk within seconds, so a
// relay killed outright (kill -9) loses little.
func TestUsageSavedWhileRunning(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path, usage := filepath.Join(dir, "keys.json"), filepath.Join(dir, "usage.json")
	alice, _ := Add(path, "alice", Entry{})
	kr, err := NewKeyring(path, usage, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { kr.Watch(ctx, 50*time.Millisecond) })
	defer func() { cancel(); wg.Wait() }()
	d, tok := token(t, alice)
	kr.Authenticate(d, tok, time.Now()).AddBytes(40 << 20)
	start := time.Now()
	// UsageSaveInterval is 5 s: allow for a busy machine, and stay under
	// the 30 s of the old interval.
	for time.Since(start) < 4*UsageSaveInterval {
		if used, _ := LoadUsage(usage); used["alice"] == 40<<20 {
			t.Logf("usage saved after %v", time.Since(start).Round(time.Millisecond))
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("usage not saved within %v", 4*UsageSaveInterval)
}
