package transporttest

import (
	"bytes"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
)

// A UDPForwarder relays UDP datagrams between one client and a server, as
// a path through a censor: it can drop everything (a blackholed server)
// and record what the client sends (a captured flow, for replays). Its
// fields are safe for concurrent use.
type UDPForwarder struct {
	// Addr is where clients send to reach the server through it.
	Addr string
	// Drop, when set, drops every datagram in both directions.
	Drop atomic.Bool
	// Record, when set, keeps the client's datagrams for [UDPForwarder.Recorded].
	Record atomic.Bool

	mu   sync.Mutex
	sent [][]byte
}

// StartUDPForwarder starts a forwarder on 127.0.0.1:0 to the UDP server at
// to. It stops, and its goroutines end, with the test.
func StartUDPForwarder(t testing.TB, to string) *UDPForwarder {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	up, err := net.Dial("udp", to)
	if err != nil {
		pc.Close()
		t.Fatal(err)
	}
	f := &UDPForwarder{Addr: pc.LocalAddr().String()}
	var client atomic.Pointer[net.Addr]
	var wg sync.WaitGroup
	wg.Go(func() {
		buf := make([]byte, 65536)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			client.Store(&from)
			if f.Record.Load() {
				f.mu.Lock()
				f.sent = append(f.sent, bytes.Clone(buf[:n]))
				f.mu.Unlock()
			}
			if !f.Drop.Load() {
				up.Write(buf[:n])
			}
		}
	})
	wg.Go(func() {
		buf := make([]byte, 65536)
		for {
			n, err := up.Read(buf)
			if err != nil {
				return
			}
			if c := client.Load(); c != nil && !f.Drop.Load() {
				pc.WriteTo(buf[:n], *c)
			}
		}
	})
	t.Cleanup(func() { pc.Close(); up.Close(); wg.Wait() })
	return f
}

// Recorded returns the datagrams the client sent while Record was set.
func (f *UDPForwarder) Recorded() [][]byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.sent)
}
