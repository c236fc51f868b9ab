package antireplay

import (
	"testing"
	"time"
)

func TestCache(t *testing.T) {
	now := time.Unix(1000, 0)
	c := &Cache{TTL: time.Minute, Now: func() time.Time { return now }}
	a, b := []byte("token-a........."), []byte("token-b.........")
	if c.Seen(a) {
		t.Fatal("fresh token reported as replay")
	}
	if !c.Seen(a) {
		t.Fatal("replay not detected")
	}
	now = now.Add(90 * time.Second) // a moves to the previous generation
	if !c.Seen(a) {
		t.Fatal("replay within 2×TTL not detected")
	}
	if c.Seen(b) {
		t.Fatal("fresh token b reported as replay")
	}
	now = now.Add(3 * time.Minute) // both generations expire
	if c.Seen(a) || c.Seen(b) {
		t.Fatal("tokens remembered past 2×TTL")
	}
}

func TestCacheBound(t *testing.T) {
	c := &Cache{MaxEntries: 10}
	for i := range 100 {
		c.Seen([]byte{byte(i)})
	}
	c.mu.Lock()
	n := len(c.cur) + len(c.prev)
	c.mu.Unlock()
	if n > 20 {
		t.Fatalf("cache holds %d entries, bound is 2×10", n)
	}
}

func TestZeroValue(t *testing.T) {
	var c Cache
	if c.Seen([]byte("x")) || !c.Seen([]byte("x")) {
		t.Fatal("zero Cache does not work")
	}
}
