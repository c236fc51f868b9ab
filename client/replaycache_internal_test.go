package client

import (
	"testing"
	"time"

	"github.com/merpati/merpati/transport/link"
)

// TestMTProxyReplayCache checks the replay cache of the MTProxy front of a
// Client made by New: an entry is remembered for at least
// mtproxyReplayTTL, which outlasts the time a hello verifies (its
// timestamp ± mtproxyWindow), and forgotten after twice that; a
// generation holds at most mtproxyReplayMax entries, so a flood pushes old
// entries out after 2×mtproxyReplayMax new ones.
func TestMTProxyReplayCache(t *testing.T) {
	if mtproxyReplayTTL <= 2*mtproxyWindow {
		t.Fatalf("replay TTL %v does not outlast the %v a hello verifies", mtproxyReplayTTL, 2*mtproxyWindow)
	}
	newCache := func(now *time.Time) *Client {
		c, err := New(Config{Link: &link.Link{
			Relays: []string{"127.0.0.1:1"}, Pin: [link.PinSize]byte{1}, SNI: "cover.merpati.test", Key: [link.KeySize]byte{1},
		}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.mtReplay.Now = func() time.Time { return *now }
		return c
	}

	t0 := time.Now()
	now := t0
	c := newCache(&now)
	a, b := []byte("aaaaaaaaaaaaaaaa-x"), []byte("bbbbbbbbbbbbbbbb-y")
	if c.mtReplay.Seen(a) {
		t.Fatal("new entry reported as seen")
	}
	for _, d := range []time.Duration{time.Second, mtproxyReplayTTL - time.Second, mtproxyReplayTTL + time.Second, 2*mtproxyReplayTTL - time.Second} {
		now = t0.Add(d)
		if !c.mtReplay.Seen(a) {
			t.Fatalf("entry forgotten after %v", d)
		}
	}
	now = t0.Add(4 * mtproxyReplayTTL)
	if c.mtReplay.Seen(b) {
		t.Fatal("new entry reported as seen")
	}
	if c.mtReplay.Seen(a) {
		t.Fatal("entry remembered after both generations expired")
	}

	// With the relay's default bound (1<<20) the first key would survive
	// this flood; with the front's, it must not.
	now = t0
	full := newCache(&now)
	key := func(i int) []byte { return []byte{byte(i), byte(i >> 8), byte(i >> 16), 16: 0} }
	for i := range 2*mtproxyReplayMax + 1 {
		if full.mtReplay.Seen(key(i)) {
			t.Fatalf("entry %d reported as seen", i)
		}
	}
	if full.mtReplay.Seen(key(0)) {
		t.Fatalf("entry 0 remembered after %d newer ones: the bound of %d per generation does not apply", 2*mtproxyReplayMax, mtproxyReplayMax)
	}
}
