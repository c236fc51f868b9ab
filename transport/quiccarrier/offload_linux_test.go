package quiccarrier

import (
	"bytes"
	"log/slog"
	"net"
	"testing"
	"time"
)

// readAll reads n datagrams from pc and returns them.
func readAll(t *testing.T, pc net.PacketConn, n int) [][]byte {
	t.Helper()
	var got [][]byte
	buf := make([]byte, maxDatagram)
	pc.SetReadDeadline(time.Now().Add(10 * time.Second))
	for range n {
		m, _, err := pc.ReadFrom(buf)
		if err != nil {
			t.Fatalf("after %d datagrams: %v", len(got), err)
		}
		got = append(got, bytes.Clone(buf[:m]))
	}
	return got
}

// numbered returns a datagram of size bytes that tells i apart.
func numbered(i, size int) []byte {
	return bytes.Repeat([]byte{byte(i + 1)}, size)
}

// TestSenderGSO: the door's sender puts each run of same-size datagrams to
// one address into one segmented send, and every datagram arrives as it
// was, in order. A datagram larger than the run's, or to another
// address, starts a new message.
func TestSenderGSO(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	a, b := client(t, "127.0.0.1"), client(t, "127.0.0.1")
	f := &frontDoor{pc: pc, batch: newBatchConn(pc), log: slog.New(slog.DiscardHandler)}
	f.gso, _ = udpOffload(pc)
	if !f.gso {
		t.Skip("this kernel has no UDP GSO")
	}
	plan := []struct {
		to   net.PacketConn
		size int
	}{
		{a, 1200}, {a, 1200}, {a, 1200}, {a, 1200}, {a, 1200}, {a, 700}, // one message
		{b, 1200}, {b, 1200}, {b, 1200}, // one
		{b, 1300}, {b, 1300}, // larger: one more
		{a, 1300}, // another address
	}
	var ds []datagram
	want := map[net.PacketConn][][]byte{}
	for i, p := range plan {
		d := numbered(i, p.size)
		ds = append(ds, datagram{b: d, to: p.to.LocalAddr()})
		want[p.to] = append(want[p.to], d)
	}
	s := newSender(f)
	s.send(ds)
	if s.nmsgs != 4 {
		t.Errorf("%d messages for %d datagrams, want 4", s.nmsgs, len(ds))
	}
	for _, c := range []net.PacketConn{a, b} {
		got := readAll(t, c, len(want[c]))
		for i := range got {
			if !bytes.Equal(got[i], want[c][i]) {
				t.Errorf("datagram %d: %d bytes of %d, want %d bytes of %d", i, len(got[i]), got[i][0], len(want[c][i]), want[c][i][0])
			}
		}
	}
}

// TestFrontDoorGRO: a burst a client sends with GSO reaches the door as
// one buffer (GRO); the door passes each datagram on as it was sent.
func TestFrontDoorGRO(t *testing.T) {
	r := startDoor(t, 16, 16)
	if !r.door.gro {
		t.Skip("this kernel has no UDP GRO")
	}
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sizes := []int{1300, 1300, 1300, 1300, 500}
	var burst []byte
	var want [][]byte
	for i, n := range sizes {
		d := numbered(i, n)
		d[0] = 0x40 // a short header packet, not an Initial: the cover's
		want = append(want, d)
		burst = append(burst, d...)
	}
	oob := segmentSizeMsg(make([]byte, segmentSizeLen), sizes[0])
	if _, _, err := c.WriteMsgUDP(burst, oob, r.addr); err != nil {
		t.Skipf("this socket cannot send with GSO: %v", err)
	}
	got := readAll(t, r.cover, len(sizes))
	for i := range got {
		if !bytes.Equal(got[i], want[i]) {
			t.Errorf("datagram %d: %d bytes, want %d", i, len(got[i]), len(want[i]))
		}
	}
	if n := r.door.groReads.Load(); n != 1 {
		t.Errorf("the door read %d coalesced buffers, want 1", n)
	}
}
