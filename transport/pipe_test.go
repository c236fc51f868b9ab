package transport

import (
	"bytes"
	"crypto/rand"
	"io"
	"net"
	"runtime"
	"sync/atomic"
	"testing"
	"time"
)

// tcpPair returns the two ends of a loopback TCP connection.
func tcpPair(t *testing.T) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ch := make(chan net.Conn, 1)
	go func() { c, _ := ln.Accept(); ch <- c }()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s := <-ch
	return c.(*net.TCPConn), s.(*net.TCPConn)
}

func TestSpliceHalfClose(t *testing.T) {
	client, a := tcpPair(t)
	b, server := tcpPair(t)
	var counted atomic.Int64
	done := make(chan [2]int64)
	go func() {
		x, y := Splice(a, b, func(n int) { counted.Add(int64(n)) })
		done <- [2]int64{x, y}
	}()
	up := make([]byte, 1<<20)
	rand.Read(up)
	// The client sends everything and half-closes; the server reads to EOF
	// and only then answers, which works only if half-close propagates.
	go func() {
		client.Write(up)
		client.CloseWrite()
	}()
	got, err := io.ReadAll(server)
	if err != nil || !bytes.Equal(got, up) {
		t.Fatalf("server read %d bytes, err %v", len(got), err)
	}
	server.Write([]byte("answer"))
	server.Close()
	ans, err := io.ReadAll(client)
	if err != nil || string(ans) != "answer" {
		t.Fatalf("client read %q, %v", ans, err)
	}
	n := <-done
	if n[0] != int64(len(up)) || n[1] != 6 || counted.Load() != int64(len(up))+6 {
		t.Fatalf("counts %v, counted %d", n, counted.Load())
	}
	client.Close()
}

// TestSpliceIdleMemory: a splice between TCP conns that has carried a
// burst each way holds no big buffer once quiet. Each of n splices
// carries a 40 KiB write each way (which fills the small buffer, then a
// big one in part: no short read ends it) and then idles; the heap they
// hold is measured. Before the big buffer was taken only once data was
// there, each held its two: 136 KB a splice.
func TestSpliceIdleMemory(t *testing.T) {
	const n, size = 40, 40 << 10
	heap := func() uint64 {
		runtime.GC()
		runtime.GC() // the pool's victim cache goes with the second
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	burst := make([]byte, size)
	got := make([]byte, size)
	base := heap()
	var keep []net.Conn
	for range n {
		a, a2 := tcpPair(t)
		b, b2 := tcpPair(t)
		go Splice(a2, b2, nil)
		for _, dir := range [][2]net.Conn{{a, b}, {b, a}} {
			errc := make(chan error, 1)
			go func() { _, err := dir[0].Write(burst); errc <- err }()
			if _, err := io.ReadFull(dir[1], got); err != nil {
				t.Fatal(err)
			}
			if err := <-errc; err != nil {
				t.Fatal(err)
			}
		}
		keep = append(keep, a, b)
	}
	// The splices' last writes may still be returning their buffers.
	per := (float64(heap()) - float64(base)) / n
	for end := time.Now().Add(10 * time.Second); per > 32<<10 && time.Now().Before(end); {
		time.Sleep(50 * time.Millisecond)
		per = (float64(heap()) - float64(base)) / n
	}
	runtime.KeepAlive(keep)
	t.Logf("%.1f KB of heap per quiet splice", per/1000)
	if per > 32<<10 {
		t.Errorf("a quiet splice holds %.1f KB of heap, want under 32 KiB", per/1000)
	}
}
