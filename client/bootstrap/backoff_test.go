package bootstrap_test

import (
	"testing"
	"time"

	"github.com/merpati/merpati/client/bootstrap"
)

// TestBackoff: waits grow exponentially up to the cap, are jittered
// between half and all of the step, and reset after a success.
func TestBackoff(t *testing.T) {
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, r := range []float64{0, 0.999999} {
		b := &bootstrap.Backoff{Base: 10 * time.Second, Cap: 100 * time.Second, Rand: func() float64 { return r }}
		if !b.Allow(start) {
			t.Fatal("a new Backoff does not allow a fetch")
		}
		var got []time.Duration
		for range 6 {
			got = append(got, b.Failed(start).Round(time.Second))
		}
		want := []time.Duration{5, 10, 20, 40, 50, 50}
		if r > 0 {
			want = []time.Duration{10, 20, 40, 80, 100, 100}
		}
		for i := range want {
			if got[i] != want[i]*time.Second {
				t.Fatalf("rand %v: waits %v, want %v (seconds)", r, got, want)
			}
		}
		if b.Allow(start.Add(want[5]*time.Second - time.Second)) {
			t.Error("allowed before the wait was over")
		}
		if !b.Allow(start.Add(want[5] * time.Second)) {
			t.Error("not allowed after the wait")
		}
		b.Succeeded(start)
		if b.Allow(start.Add(4 * time.Second)) {
			t.Error("allowed at once after a success")
		}
		if d := b.Failed(start).Round(time.Second); d != want[0]*time.Second {
			t.Errorf("first wait after a success %v, want %v", d, want[0]*time.Second)
		}
	}
	// Real jitter: two Backoffs rarely agree.
	a, b := &bootstrap.Backoff{}, &bootstrap.Backoff{}
	same := 0
	for range 5 {
		if a.Failed(start) == b.Failed(start) {
			same++
		}
	}
	if same == 5 {
		t.Error("no jitter")
	}
	if d := (&bootstrap.Backoff{}).Failed(start); d < bootstrap.DefaultBackoffBase/2 || d > bootstrap.DefaultBackoffBase {
		t.Errorf("default first wait %v", d)
	}
}
