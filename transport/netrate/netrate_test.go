package netrate

import (
	"net/netip"
	"testing"
	"time"
)

func TestLimiter(t *testing.T) {
	l := New(10, 20)
	now := time.Unix(1_800_000_000, 0)
	a := netip.MustParseAddr("192.0.2.7")
	same := netip.MustParseAddr("192.0.2.200") // the same /24
	other := netip.MustParseAddr("198.51.100.1")
	n := 0
	for range 50 {
		if l.Allow(a, now) {
			n++
		}
	}
	if n != 20 {
		t.Fatalf("%d allowed in a burst, want 20", n)
	}
	if l.Allow(same, now) {
		t.Error("an address of the same /24 was allowed past the burst")
	}
	if !l.Allow(other, now) {
		t.Error("another network was limited")
	}
	// Half a second refills five tokens.
	n = 0
	for range 10 {
		if l.Allow(a, now.Add(500*time.Millisecond)) {
			n++
		}
	}
	if n != 5 {
		t.Errorf("%d allowed after 0.5 s, want 5", n)
	}
	v6 := netip.MustParseAddr("2001:db8:1:2:3::1")
	if Network(v6).Bits() != 56 || Network(a).Bits() != 24 {
		t.Error("networks are not /24 and /56")
	}
	if Network(netip.MustParseAddr("::ffff:192.0.2.9")) != Network(a) {
		t.Error("an IPv4-mapped address counts apart from its IPv4 network")
	}
}
