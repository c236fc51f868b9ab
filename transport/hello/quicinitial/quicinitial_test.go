package quicinitial

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/merpati/merpati/transport/hello"
)

// fakeHello is a handshake message that starts like a ClientHello.
func fakeHello(n int) []byte {
	m := make([]byte, n)
	rand.Read(m)
	m[0] = 1
	m[1], m[2], m[3] = byte((n-4)>>16), byte((n-4)>>8), byte(n-4)
	return m
}

func TestCollectorReordered(t *testing.T) {
	dcid := []byte{1, 2, 3, 4, 5, 6, 7, 8}
	msg := fakeHello(1800)
	// Chromium-like: two datagrams, CRYPTO frames out of order with PING
	// and PADDING between, the hello's start in the second datagram.
	d1 := SealInitial(dcid, 0, append(append(AppendCrypto(nil, 900, msg[900:1500]), 0x01, 0x00, 0x00), AppendCrypto(nil, 1500, msg[1500:])...), 1250)
	d2 := SealInitial(dcid, 1, append(AppendCrypto(nil, 0, msg[:900]), 0x01), 1250)
	var c Collector
	if err := c.Add(d1); err != nil {
		t.Fatal(err)
	}
	if _, ok := c.Random(); ok {
		t.Fatal("random before the hello's start arrived")
	}
	if err := c.Add(d2); err != nil {
		t.Fatal(err)
	}
	r, ok := c.Random()
	if !ok || !bytes.Equal(r[:], msg[RandomOffset:RandomOffset+32]) {
		t.Fatalf("random %x, %v", r, ok)
	}
	got, ok := c.ClientHello()
	if !ok || !bytes.Equal(got, msg) {
		t.Fatal("hello not reassembled")
	}
	if len(c.Datagrams) != 2 || c.Datagrams[0] != 1250 || c.Packets != 2 {
		t.Fatalf("datagrams %v, packets %d", c.Datagrams, c.Packets)
	}
}

func TestCollectorRejects(t *testing.T) {
	dcid := []byte{1, 2, 3, 4, 5, 6, 7, 8}
	good := SealInitial(dcid, 0, AppendCrypto(nil, 0, fakeHello(300)), 1200)
	flipped := bytes.Clone(good)
	flipped[len(flipped)-1] ^= 1
	v2 := bytes.Clone(good)
	binary.BigEndian.PutUint32(v2[1:5], 0x6b3343cf)
	short := SealInitial([]byte{1, 2, 3, 4}, 0, AppendCrypto(nil, 0, fakeHello(300)), 1200)
	stream := SealInitial(dcid, 0, []byte{0x08, 0x00, 0x01, 'x'}, 1200) // STREAM frame
	huge := SealInitial(dcid, 0, AppendCrypto(nil, MaxCrypto, []byte{1}), 1200)
	for _, tc := range []struct {
		name string
		d    []byte
		want error
	}{
		{"empty", nil, ErrNotInit},
		{"short header", []byte{0x40, 1, 2, 3}, ErrNotInit},
		{"truncated", good[:40], ErrShort},
		{"tampered", flipped, ErrDecrypt},
		{"version 2", v2, ErrVersion},
		{"short dcid", short, ErrNotInit},
		{"stream frame", stream, ErrFrame},
		{"beyond MaxCrypto", huge, ErrFrame},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var c Collector
			if err := c.Add(tc.d); !errors.Is(err, tc.want) {
				t.Fatalf("err %v, want %v", err, tc.want)
			}
		})
	}
}

// TestCollectorQuicGo reads the Initials of a real QUIC client (upstream
// quic-go, crypto/tls) from a UDP socket and finds its ClientHello.
func TestCollectorQuicGo(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	go quic.DialAddr(ctx, pc.LocalAddr().String(), &tls.Config{ServerName: "collector.test", NextProtos: []string{"h3"}}, nil)
	var c Collector
	buf := make([]byte, 2048)
	for {
		pc.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, _, err := pc.ReadFrom(buf)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Add(buf[:n]); err != nil {
			t.Fatal(err)
		}
		if msg, ok := c.ClientHello(); ok {
			rec := append([]byte{22, 3, 1, byte(len(msg) >> 8), byte(len(msg))}, msg...)
			h, err := hello.Parse(rec)
			if err != nil {
				t.Fatal(err)
			}
			if h.ServerName != "collector.test" {
				t.Fatalf("SNI %q", h.ServerName)
			}
			r, _ := c.Random()
			if !bytes.Equal(r[:], h.Random[:]) {
				t.Fatalf("random %x, hello's %x", r, h.Random)
			}
			return
		}
	}
}

func TestParseLong(t *testing.T) {
	dcid := []byte{9, 9, 9, 9, 9, 9, 9, 9}
	d := SealInitial(dcid, 7, AppendCrypto(nil, 0, fakeHello(100)), 1200)
	d = append(d, 0x40, 1, 2) // a coalesced short header packet
	h, err := ParseLong(d)
	if err != nil {
		t.Fatal(err)
	}
	if h.Type != TypeInitial || h.Version != Version1 || !bytes.Equal(h.DCID, dcid) || len(h.SCID) != 0 || h.Len != 1200 {
		t.Fatalf("%+v", h)
	}
	vn := []byte{0x80, 0, 0, 0, 0, 2, 1, 2, 1, 3, 0, 0, 0, 1}
	if h, err := ParseLong(vn); err != nil || h.Version != 0 || len(h.SCID) != 1 {
		t.Fatalf("version negotiation: %+v %v", h, err)
	}
	if id, ok := ShortDCID([]byte{0x41, 1, 2, 3, 4, 5}, 4); !ok || !bytes.Equal(id, []byte{1, 2, 3, 4}) {
		t.Fatalf("short dcid %x %v", id, ok)
	}
}

func FuzzCollector(f *testing.F) {
	dcid := []byte{1, 2, 3, 4, 5, 6, 7, 8}
	msg := fakeHello(600)
	f.Add(SealInitial(dcid, 0, AppendCrypto(nil, 0, msg), 1200), []byte{})
	f.Add(SealInitial(dcid, 0, AppendCrypto(nil, 300, msg[300:]), 1200), SealInitial(dcid, 1, AppendCrypto(nil, 0, msg[:300]), 1200))
	f.Add(SealInitial(dcid, 0, []byte{0x02, 0x05, 0x01, 0x01, 0x00, 0x00, 0x01, 0x01}, 1200), []byte{0x40})
	f.Fuzz(func(t *testing.T, a, b []byte) {
		var c Collector
		for _, d := range [][]byte{a, b} {
			before := c.first
			if err := c.Add(d); err != nil {
				continue
			}
			if c.first < before || len(c.buf) > MaxCrypto || len(c.buf) != len(c.have) {
				t.Fatalf("collector state: first %d (was %d), buf %d, have %d", c.first, before, len(c.buf), len(c.have))
			}
		}
		if m, ok := c.ClientHello(); ok && (len(m) < 4 || m[0] != 1) {
			t.Fatalf("bad hello %x", m)
		}
		ParseLong(a)
		ShortDCID(a, 8)
	})
}
