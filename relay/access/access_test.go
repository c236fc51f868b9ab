package access

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/merpati/merpati/transport/auth"
)

type closer struct{ closed atomic.Bool }

func (c *closer) Close() error { c.closed.Store(true); return nil }

func token(t *testing.T, e Entry) ([32]byte, []byte) {
	t.Helper()
	var d [32]byte
	d[0] = 1
	tok := auth.Token(e.Key, auth.Slot(time.Now()), d)
	return d, tok[:]
}

func TestAddRevoke(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keys.json")
	a, err := Add(path, "alice", Entry{QuotaBytes: 100})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Add(path, "bob", Entry{}); err != nil {
		t.Fatal(err)
	}
	if _, err := Add(path, "alice", Entry{}); !errors.Is(err, ErrExists) {
		t.Errorf("duplicate add: %v", err)
	}
	if _, err := Add(path, "bad name", Entry{}); !errors.Is(err, ErrName) {
		t.Errorf("bad name: %v", err)
	}
	fi, _ := os.Stat(path)
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("keys file mode %v, want 0600", fi.Mode().Perm())
	}
	got, err := Load(path)
	if err != nil || len(got) != 2 || got[0].Key != a.Key || got[0].QuotaBytes != 100 {
		t.Fatalf("load: %+v %v", got, err)
	}
	if err := Revoke(path, "alice"); err != nil {
		t.Fatal(err)
	}
	if err := Revoke(path, "alice"); !errors.Is(err, ErrNotFound) {
		t.Errorf("second revoke: %v", err)
	}
	if got, _ := Load(path); len(got) != 1 || got[0].Name != "bob" {
		t.Errorf("after revoke: %+v", got)
	}
}

func TestLoadRejects(t *testing.T) {
	dir := t.TempDir()
	k := auth.NewKey().String()
	for name, body := range map[string]string{
		"unknown field": `{"keys":[],"extra":1}`,
		"no key":        `{"keys":[{"name":"a"}]}`,
		"dup name":      `{"keys":[{"name":"a","key":"` + k + `"},{"name":"a","key":"` + auth.NewKey().String() + `"}]}`,
		"dup key":       `{"keys":[{"name":"a","key":"` + k + `"},{"name":"b","key":"` + k + `"}]}`,
		"bad name":      `{"keys":[{"name":"a b","key":"` + k + `"}]}`,
		"not json":      `keys`,
	} {
		p := filepath.Join(dir, "k.json")
		os.WriteFile(p, []byte(body), 0o600)
		if _, err := Load(p); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestKeyringRevocation(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "keys.json")
	alice, _ := Add(path, "alice", Entry{})
	bob, _ := Add(path, "bob", Entry{})
	kr, err := NewKeyring(path, filepath.Join(dir, "usage.json"), nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { kr.Watch(ctx, 10*time.Millisecond); close(done) }()

	d, tok := token(t, alice)
	ua := kr.Authenticate(d, tok, time.Now())
	if ua == nil || ua.Name() != "alice" {
		t.Fatalf("alice not authenticated: %v", ua)
	}
	db, tokb := token(t, bob)
	ub := kr.Authenticate(db, tokb, time.Now())
	if ub == nil || ub.Name() != "bob" {
		t.Fatal("bob not authenticated")
	}
	sa, sb := &closer{}, &closer{}
	ua.Track(sa)
	ub.Track(sb)
	ub.AddBytes(42)

	if err := Revoke(path, "alice"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !sa.closed.Load() && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if !sa.closed.Load() {
		t.Fatal("revoked key's session still open")
	}
	if sb.closed.Load() {
		t.Fatal("revoking alice closed bob's session")
	}
	if kr.Authenticate(d, tok, time.Now()) != nil {
		t.Fatal("revoked key still authenticates")
	}
	if _, ok := ua.Track(&closer{}); ok {
		t.Fatal("revoked user accepted a new session")
	}
	if kr.Authenticate(db, tokb, time.Now()) != ub {
		t.Fatal("bob's live state changed on an unrelated reload")
	}
	cancel()
	<-done
	used, err := LoadUsage(filepath.Join(dir, "usage.json"))
	if err != nil || used["bob"] != 42 {
		t.Fatalf("usage: %v %v", used, err)
	}
}

func TestLimits(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keys.json")
	e, _ := Add(path, "carol", Entry{QuotaBytes: 10, MaxConns: 1, Expires: time.Now().Add(time.Hour)})
	kr, err := NewKeyring(path, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	d, tok := token(t, e)
	u := kr.Authenticate(d, tok, time.Now())
	if u == nil {
		t.Fatal("not authenticated")
	}
	if !u.AcquireStream() || u.AcquireStream() {
		t.Fatal("MaxConns not enforced")
	}
	u.ReleaseStream()
	if !u.AcquireStream() {
		t.Fatal("released stream not returned")
	}
	u.AddBytes(10)
	if !u.OverQuota() {
		t.Fatal("quota not enforced")
	}
	later := time.Now().Add(2 * time.Hour)
	tokLater := auth.Token(e.Key, auth.Slot(later), d)
	if kr.Authenticate(d, tokLater[:], later) != nil {
		t.Fatal("expired key authenticated")
	}
}
