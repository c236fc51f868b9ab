package access

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/merpati/merpati/transport/mtproxy"
	"github.com/merpati/merpati/transport/mtproxy/mtproxytest"
)

// fakeTLSHello returns a real ClientHello record signed as a FakeTLS hello
// with key at ts.
func fakeTLSHello(t testing.TB, key mtproxy.Key, ts time.Time) *mtproxy.ClientHello {
	t.Helper()
	rec := mtproxytest.HelloRecord(t, "cover.example")
	if err := mtproxytest.SignClientHello(rec, key, ts); err != nil {
		t.Fatal(err)
	}
	h, err := mtproxy.ParseClientHello(rec)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func TestMTProxySecrets(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keys.json")
	alice, err := Add(path, "alice", Entry{})
	if err != nil {
		t.Fatal(err)
	}
	given := mtproxy.NewKey()
	bob, err := Add(path, "bob", Entry{MTProxySecret: given})
	if err != nil {
		t.Fatal(err)
	}
	if alice.MTProxySecret.IsZero() || bob.MTProxySecret != given || alice.MTProxySecret == bob.MTProxySecret {
		t.Fatalf("secrets: alice %v bob %v", alice.MTProxySecret, bob.MTProxySecret)
	}
	if _, err := Add(path, "carol", Entry{MTProxySecret: given}); err == nil {
		t.Fatal("a secret already in use was accepted")
	}
	b, _ := os.ReadFile(path)
	if !strings.Contains(string(b), `"mtproxy_secret": "`+given.String()+`"`) {
		t.Fatalf("keys file does not keep the secret in hex:\n%s", b)
	}
	// A file with the same secret twice is rejected as a whole.
	dup := bytes.Replace(b, []byte(alice.MTProxySecret.String()), []byte(given.String()), 1)
	bad := filepath.Join(t.TempDir(), "dup.json")
	os.WriteFile(bad, dup, 0o600)
	if _, err := Load(bad); err == nil {
		t.Fatal("duplicate MTProxy secret accepted by Load")
	}

	k, err := NewKeyring(path, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	for _, tc := range []struct {
		name string
		key  mtproxy.Key
		ts   time.Time
		want string
	}{
		{"alice", alice.MTProxySecret, now, "alice"},
		{"bob", given, now.Add(-time.Minute), "bob"},
		{"stale", given, now.Add(-time.Hour), ""},
		{"unknown", mtproxy.NewKey(), now, ""},
	} {
		u, key := k.MatchMTProxy(fakeTLSHello(t, tc.key, tc.ts), now, 2*time.Minute)
		got := ""
		if u != nil {
			got = u.Name()
			if key != tc.key {
				t.Errorf("%s: matched key %v", tc.name, key)
			}
		}
		if got != tc.want {
			t.Errorf("%s: matched %q, want %q", tc.name, got, tc.want)
		}
	}
}

// BenchmarkMatchMTProxy measures what a hello that is no MTProxy hello
// costs a relay with 100 keys (every key is tried), and a match.
func BenchmarkMatchMTProxy(b *testing.B) {
	path := filepath.Join(b.TempDir(), "keys.json")
	var last Entry
	for i := range 100 {
		e, err := Add(path, "k"+strings.Repeat("x", i%3)+string(rune('a'+i%26))+string(rune('a'+i/26)), Entry{})
		if err != nil {
			b.Fatal(err)
		}
		last = e
	}
	k, err := NewKeyring(path, "", nil)
	if err != nil {
		b.Fatal(err)
	}
	now := time.Now()
	for _, bc := range []struct {
		name string
		key  mtproxy.Key
		want bool
	}{{"keys=100/no-match", mtproxy.NewKey(), false}, {"keys=100/last-matches", last.MTProxySecret, true}} {
		h := fakeTLSHello(b, bc.key, now)
		b.Run(bc.name, func(b *testing.B) {
			for b.Loop() {
				if u, _ := k.MatchMTProxy(h, now, time.Minute); (u != nil) != bc.want {
					b.Fatal("wrong match")
				}
			}
		})
	}
}
