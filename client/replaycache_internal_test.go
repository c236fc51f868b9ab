package client

import (
	"testing"
	"time"
)

// TestMTProxyReplayCache checks the front's replay cache: an entry is
// remembered for at least mtproxyReplayTTL, which outlasts the time a
// hello verifies (its timestamp ± mtproxyWindow), and forgotten after
// twice that; a full generation rotates early.
func TestMTProxyReplayCache(t *testing.T) {
	if mtproxyReplayTTL <= 2*mtproxyWindow {
		t.Fatalf("replay TTL %v does not outlast the %v a hello verifies", mtproxyReplayTTL, 2*mtproxyWindow)
	}
	var c replayCache
	t0 := time.Now()
	a, b := []byte("aaaaaaaaaaaaaaaa-x"), []byte("bbbbbbbbbbbbbbbb-y")
	if c.seen(a, t0) {
		t.Fatal("new entry reported as seen")
	}
	for _, d := range []time.Duration{time.Second, mtproxyReplayTTL - time.Second, mtproxyReplayTTL + time.Second, 2*mtproxyReplayTTL - time.Second} {
		if !c.seen(a, t0.Add(d)) {
			t.Fatalf("entry forgotten after %v", d)
		}
	}
	if c.seen(b, t0.Add(4*mtproxyReplayTTL)) {
		t.Fatal("new entry reported as seen")
	}
	if c.seen(a, t0.Add(4*mtproxyReplayTTL)) {
		t.Fatal("entry remembered after both generations expired")
	}

	var full replayCache
	for i := range mtproxyReplayMax + 1 {
		var k [16]byte
		k[0], k[1], k[2] = byte(i), byte(i>>8), byte(i>>16)
		if full.seen(k[:], t0) {
			t.Fatalf("entry %d reported as seen", i)
		}
	}
	if len(full.cur) > mtproxyReplayMax || len(full.prev) > mtproxyReplayMax {
		t.Fatalf("generations of %d and %d entries, bound %d", len(full.cur), len(full.prev), mtproxyReplayMax)
	}
}
