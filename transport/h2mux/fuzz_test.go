package h2mux

import (
	"context"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

// FuzzServer feeds arbitrary bytes to a server session, with and without a
// valid connection preface and SETTINGS in front, and checks that the
// session neither panics nor hangs: it must end once the input does.
func FuzzServer(f *testing.F) {
	// Seeds: a valid opening, a request with data and END_STREAM, pings,
	// window updates, and some garbage.
	settings := []byte{0, 0, 0, 4, 0, 0, 0, 0, 0}
	req := []byte{0, 0, 6, 1, 4, 0, 0, 0, 1, 0x83, 0x87, 0x84, 0x41, 0x01, 'x'}
	data := []byte{0, 0, 3, 0, 1, 0, 0, 0, 1, 'a', 'b', 'c'}
	ping := []byte{0, 0, 8, 6, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8}
	wu := []byte{0, 0, 4, 8, 0, 0, 0, 0, 1, 0, 0, 1, 0}
	rst := []byte{0, 0, 4, 3, 0, 0, 0, 0, 1, 0, 0, 0, 8}
	// HEADERS split by CONTINUATION, then padded DATA with END_STREAM.
	split := []byte{0, 0, 3, 1, 0, 0, 0, 0, 1, 0x83, 0x87, 0x84, 0, 0, 3, 9, 4, 0, 0, 0, 1, 0x41, 0x01, 'x'}
	padded := []byte{0, 0, 6, 0, 9, 0, 0, 0, 1, 2, 'h', 'i', 'x', 0, 0}
	f.Add(true, join(settings, split, padded))
	f.Add(true, settings)
	f.Add(true, join(settings, req, data))
	f.Add(true, join(settings, req, wu, data, rst))
	f.Add(true, join(settings, ping, ping, wu))
	f.Add(false, []byte(http2.ClientPreface))
	f.Add(false, []byte("GET / HTTP/1.1\r\n\r\n"))
	f.Add(true, []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, preface bool, in []byte) {
		c, s := net.Pipe()
		ss, err := Server(s, Config{MaxStreamWindow: 65535, MaxConnWindow: 1 << 20, MaxStreams: 8})
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		defer wg.Wait()
		wg.Add(2)
		go func() { // drain whatever the server writes
			defer wg.Done()
			io.Copy(io.Discard, c)
		}()
		go func() {
			defer wg.Done()
			for {
				st, err := ss.AcceptStream(context.Background())
				if err != nil {
					return
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					io.Copy(io.Discard, st)
					st.Write([]byte("ok"))
					st.CloseWrite()
					st.Close()
				}()
			}
		}()
		if preface {
			c.Write([]byte(http2.ClientPreface))
		}
		c.Write(in)
		c.Close()
		select {
		case <-ss.Done():
		case <-time.After(10 * time.Second):
			t.Fatal("server session did not end after its input did")
		}
		ss.Close()
	})
}

func join(parts ...[]byte) []byte {
	var out []byte
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}
