package relay

import (
	"context"
	"crypto/tls"
	"io"
	"log"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/merpati/merpati/transport/tlscarrier"
)

// TestLearnIdleTwice: the cover site's idle close is learned only when two
// connections in a row end after the same idle time; one that ends
// sooner (a restart, a middlebox) is not taken for it.
func TestLearnIdleTwice(t *testing.T) {
	for _, tc := range []struct {
		name   string
		closes []time.Duration // the idle close of each connection in turn
		ok     bool
	}{
		{"agree", []time.Duration{1500 * time.Millisecond, 1500 * time.Millisecond}, true},
		{"differ", []time.Duration{500 * time.Millisecond, 5 * time.Second}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr := startIdleCover(t, tc.closes)
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			d, err := learnIdleTwice(ctx, addr, "cover.merpati.test")
			t.Logf("learned %v, %v", d, err)
			switch {
			case tc.ok && err != nil:
				t.Fatal(err)
			case tc.ok && (d < tc.closes[0] || d > tc.closes[0]+3*time.Second): // a late timer on a busy machine
				t.Errorf("learned %v, want about %v", d, tc.closes[0])
			case !tc.ok && err == nil:
				t.Errorf("learned %v from closes after %v", d, tc.closes)
			}
		})
	}
}

// startIdleCover starts an HTTP/1.1 server over TLS that closes its n-th
// connection after it has been idle for closes[n].
func startIdleCover(t *testing.T, closes []time.Duration) string {
	t.Helper()
	certPEM, keyPEM, err := tlscarrier.NewCertificateValid("cover.merpati.test", "ECDSA-P256", time.Now().Add(-time.Hour), time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var n atomic.Int32
	var mu sync.Mutex
	idle := map[net.Conn]time.Duration{}
	timers := map[net.Conn]*time.Timer{}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Write([]byte(strings.Repeat("page ", 100)))
		}),
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"http/1.1"}},
		ConnState: func(c net.Conn, s http.ConnState) {
			mu.Lock()
			defer mu.Unlock()
			switch s {
			case http.StateNew:
				i := int(n.Add(1)) - 1
				idle[c] = closes[min(i, len(closes)-1)]
			case http.StateIdle:
				timers[c] = time.AfterFunc(idle[c], func() { c.Close() })
			case http.StateActive:
				if tm := timers[c]; tm != nil {
					tm.Stop()
				}
			case http.StateClosed, http.StateHijacked:
				if tm := timers[c]; tm != nil {
					tm.Stop()
				}
				delete(timers, c)
				delete(idle, c)
			}
		},
		ErrorLog: log.New(io.Discard, "", 0),
	}
	go srv.ServeTLS(ln, "", "")
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}
