package mtproxy_test

import (
	"sync"
	"testing"
	"time"

	"github.com/merpati/merpati/transport/mtproxy"
	"github.com/merpati/merpati/transport/mtproxy/mtproxytest"
)

// TestPreparedKey: a prepared key accepts exactly the hellos its key
// signed (mtproxytest signs with crypto/hmac), from many goroutines at
// once, and refuses those of other keys.
func TestPreparedKey(t *testing.T) {
	now := time.Now()
	keys := make([]mtproxy.Key, 8)
	prepared := make([]*mtproxy.PreparedKey, len(keys))
	hellos := make([]*mtproxy.ClientHello, len(keys))
	for i := range keys {
		keys[i] = mtproxy.NewKey()
		prepared[i] = keys[i].Prepare()
		rec := mtproxytest.HelloRecord(t, "cover.example.com")
		if err := mtproxytest.SignClientHello(rec, keys[i], now); err != nil {
			t.Fatal(err)
		}
		h, err := mtproxy.ParseClientHello(rec)
		if err != nil {
			t.Fatal(err)
		}
		hellos[i] = h
	}
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 20 {
				for i, h := range hellos {
					for j, p := range prepared {
						err := h.VerifyPrepared(p, now, time.Minute)
						if (err == nil) != (i == j) {
							t.Errorf("hello of key %d, prepared key %d: %v", i, j, err)
						}
						if err2 := h.Verify(keys[j], now, time.Minute); (err2 == nil) != (err == nil) {
							t.Errorf("hello of key %d, key %d: Verify %v, VerifyPrepared %v", i, j, err2, err)
						}
					}
				}
			}
		})
	}
	wg.Wait()
}

// BenchmarkVerifyPrepared measures one secret's check of a crypto/tls
// hello that no secret signed, prepared or not.
func BenchmarkVerifyPrepared(b *testing.B) {
	rec := mtproxytest.HelloRecord(b, "cover.example.com")
	mtproxytest.SignClientHello(rec, mtproxy.NewKey(), time.Now())
	h, err := mtproxy.ParseClientHello(rec)
	if err != nil {
		b.Fatal(err)
	}
	key := mtproxy.NewKey()
	p := key.Prepare()
	b.Logf("hello record of %d bytes", len(rec))
	b.Run("key", func(b *testing.B) {
		for b.Loop() {
			h.Verify(key, time.Now(), time.Minute)
		}
	})
	b.Run("prepared", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			h.VerifyPrepared(p, time.Now(), time.Minute)
		}
	})
}
