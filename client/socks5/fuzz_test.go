package socks5_test

import (
	"testing"
	"testing/synctest"
	"time"

	"github.com/merpati/merpati/client/socks5"
)

// FuzzHandshake feeds arbitrary client bytes to Handshake over net.Pipe,
// with and without required authentication. Handshake must never panic
// and must always return (in a synctest bubble a stalled client times out
// in fake time); a request it accepts must name a destination.
func FuzzHandshake(f *testing.F) {
	f.Add([]byte{5, 1, 0, 5, 1, 0, 1, 127, 0, 0, 1, 0, 80}, false)
	f.Add([]byte{5, 1, 0, 5, 1, 0, 3, 4, 'a', '.', 'b', 'c', 1, 187}, false)
	f.Add([]byte{5, 1, 2, 1, 5, 'a', 'l', 'i', 'c', 'e', 6, 's', '3', 'c', 'r', 'e', 't',
		5, 1, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 80}, true)
	f.Add([]byte{5, 1, 0, 5, 2, 0, 1, 0, 0, 0, 0, 0, 0}, false)
	f.Add([]byte{4, 1, 0, 80, 127, 0, 0, 1, 0}, false)
	f.Fuzz(func(t *testing.T, in []byte, auth bool) {
		cfg := socks5.Config{HandshakeTimeout: time.Second}
		if auth {
			cfg.Users = map[string]string{"alice": "s3cret"}
		}
		synctest.Test(t, func(t *testing.T) {
			req, _, err := exchange(cfg, in)
			if err != nil {
				if req != nil {
					t.Errorf("request %+v returned with error %v", req, err)
				}
				return
			}
			if req.Host == "" {
				t.Errorf("accepted request without host: %+v", req)
			}
			if auth && req.User != "alice" {
				t.Errorf("accepted user %q", req.User)
			}
		})
	})
}
