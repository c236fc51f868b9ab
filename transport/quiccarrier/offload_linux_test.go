package quiccarrier

import (
	"bytes"
	"log/slog"
	"net"
	"sync"
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
	var ob outBatch
	want := map[net.PacketConn][][]byte{}
	for i, p := range plan {
		d := numbered(i, p.size)
		ob.add(d, p.to.LocalAddr())
		want[p.to] = append(want[p.to], d)
	}
	s := newSender(f)
	s.send(&ob)
	if s.nmsgs != 4 {
		t.Errorf("%d messages for %d datagrams, want 4", s.nmsgs, len(ob.ds))
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

// TestFrontDoorWriteTo: datagrams quic-go writes from several goroutines
// at once all leave the door, each writer's in order and as written; and
// what was written before Close leaves before the socket closes.
func TestFrontDoorWriteTo(t *testing.T) {
	r := startDoor(t, 16, 16)
	const writers, each = 4, 12 // 48 datagrams: a socket buffers about 100 small ones
	dst := client(t, "127.0.0.1")
	size := func(i int) int { return 2 * (300 + i*7%200) } // sizes vary, so runs break
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				d := bytes.Repeat([]byte{byte(w), byte(i)}, size(i)/2)
				if _, err := r.door.WriteTo(d, dst.LocalAddr()); err != nil {
					t.Errorf("writer %d, datagram %d: %v", w, i, err)
					return
				}
			}
		})
	}
	wg.Wait()
	r.door.Close()
	next := make([]int, writers)
	for _, d := range readAll(t, dst, writers*each) {
		w, i := int(d[0]), int(d[1])
		if w >= writers || i != next[w] || len(d) != size(i) {
			t.Fatalf("got datagram %d of writer %d (%d bytes), want datagram %d of it", i, w, len(d), next[min(w, writers-1)])
		}
		next[w]++
	}
	if _, err := r.door.WriteTo([]byte("late"), dst.LocalAddr()); err == nil {
		t.Error("WriteTo after Close succeeded")
	}
}

// TestOutQueueFull: WriteTo's queue holds outBatches batches of writeBatch
// datagrams; a further add waits until sendLoop frees a batch, and gives
// up once the door closes.
func TestOutQueueFull(t *testing.T) {
	closed := make(chan struct{})
	q := newOutQueue(closed)
	to := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 9}
	for i := range outBatches * writeBatch {
		if !q.add([]byte{byte(i)}, to) {
			t.Fatal("add failed with room left")
		}
	}
	added := make(chan bool)
	go func() { added <- q.add([]byte{0xff}, to) }()
	select {
	case <-added:
		t.Fatal("add went through with the queue full")
	case <-time.After(50 * time.Millisecond):
	}
	bs := q.take(nil)
	if len(bs) != outBatches {
		t.Fatalf("took %d batches, want %d", len(bs), outBatches)
	}
	for k, b := range bs {
		for j, d := range b.ds {
			if got := b.bytes(d); len(got) != 1 || got[0] != byte(k*writeBatch+j) {
				t.Fatalf("batch %d, datagram %d: %v", k, j, got)
			}
		}
	}
	q.release(bs)
	if !<-added {
		t.Fatal("add failed once a batch was freed")
	}
	for range outBatches*writeBatch - 1 {
		q.add([]byte{1}, to)
	}
	go func() { added <- q.add([]byte{0xff}, to) }()
	close(closed)
	q.wakeAll()
	if <-added {
		t.Fatal("add went through a closed door's full queue")
	}
}
