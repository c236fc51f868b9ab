package relay_test

import (
	"crypto/tls"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/merpati/merpati/relay/access"
	"github.com/merpati/merpati/relay/relaytest"
	"github.com/merpati/merpati/transport/auth"
	"github.com/merpati/merpati/transport/mtproxy"
)

// TestProbeTimingManyKeys: a prober's time to the cover site's first byte
// (a TLS hello, answered with the cover's ServerHello) is the same with 1
// and with 10,000 access keys (within 2x, medians of 40): the relay finds
// a sealed token's key at once and checks nothing else that grows with
// the keys before the cover answers. Keys with MTProxy secrets are the
// exception, which the test shows too: an app's FakeTLS hello names no
// secret, so every hello is checked against each (1.4 us apiece; bounded
// to 50 hellos a second per network), and the cover's answer waits for
// that. It runs in the timing run (scripts/test.sh, without the race
// detector); under -race it only logs.
func TestProbeTimingManyKeys(t *testing.T) {
	cov := relaytest.StartCover(t)
	few := relaytest.Start(t, cov, relaytest.Options{})
	few.AddKey(t, "one", access.Entry{})
	withKeys := func(mt bool) *relaytest.Relay {
		r := relaytest.Start(t, cov, relaytest.Options{})
		err := access.Update(r.Dir.KeysPath(), func(es []access.Entry) ([]access.Entry, error) {
			for i := range 10000 {
				e := access.Entry{Name: fmt.Sprint("k", i), Key: auth.NewKey()}
				if mt {
					e.MTProxySecret = mtproxy.NewKey()
				}
				es = append(es, e)
			}
			return es, nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := r.Keys.Reload(); err != nil {
			t.Fatal(err)
		}
		return r
	}
	many, manyMT := withKeys(false), withKeys(true)
	ttfb := func(addr string) time.Duration {
		var d []time.Duration
		for range 40 {
			start := time.Now()
			c, err := tls.Dial("tcp", addr, &tls.Config{ServerName: relaytest.CoverName, InsecureSkipVerify: true})
			if err != nil {
				t.Fatal(err)
			}
			d = append(d, time.Since(start))
			c.Close()
		}
		slices.Sort(d)
		return d[len(d)/2]
	}
	// Warm both up (the cover's and the relays' first connections).
	ttfb(few.Addr)
	ttfb(many.Addr)
	a, b := ttfb(few.Addr), ttfb(many.Addr)
	t.Logf("median TLS handshake through the relay (the cover answers): 1 key %v, 10,000 keys %v (%.2fx), 10,000 keys with MTProxy secrets %v",
		a, b, float64(b)/float64(a), ttfb(manyMT.Addr))
	if raceEnabled {
		return
	}
	if b > 2*a+time.Millisecond {
		t.Errorf("with 10,000 keys a prober waits %v, with 1 key %v", b, a)
	}
}
