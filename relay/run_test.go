package relay

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/merpati/merpati/relay/access"
	"github.com/merpati/merpati/transport/auth"
)

// TestRunSavesUsageOnShutdown: the usage counted until shutdown is on disk
// when Run returns (it used to be saved, if at all, by a watcher that Run
// did not wait for).
func TestRunSavesUsageOnShutdown(t *testing.T) {
	for _, noQUIC := range []bool{false, true} {
		dir := filepath.Join(t.TempDir(), "r")
		d, err := Init(dir, Settings{Listen: "127.0.0.1:0", Public: []string{"127.0.0.1:443"},
			Cover: "https://www.example.org", NoQUIC: noQUIC})
		if err != nil {
			t.Fatal(err)
		}
		alice, err := access.Add(d.KeysPath(), "alice", access.Entry{})
		if err != nil {
			t.Fatal(err)
		}
		cfg, err := d.Config(nil)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- Run(ctx, cfg) }()

		var digest [32]byte
		tok := auth.Token(alice.Key, auth.Slot(time.Now()), digest)
		u := cfg.Keys.Authenticate(digest, tok[:], time.Now())
		if u == nil {
			t.Fatal("alice not authenticated")
		}
		u.AddBytes(40 << 20)
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("Run: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("Run did not return")
		}
		used, err := access.LoadUsage(d.UsagePath())
		if err != nil || used["alice"] != 40<<20 {
			t.Errorf("no QUIC %v: usage on disk after Run returned: %v, %v; want alice: %d", noQUIC, used, err, 40<<20)
		}
	}
}
