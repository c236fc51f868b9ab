package quiccarrier

import (
	"bytes"
	"io"
	"net"
	"slices"
	"sync"
	"testing"
	"time"
)

// scriptedReader gives what was delivered to it, as much as each Read's
// buffer takes, as a QUIC stream does, and records each Read's buffer
// size.
type scriptedReader struct {
	mu      sync.Mutex
	cond    *sync.Cond
	pending []byte
	sizes   []int
	waiting int // buffer size of a Read that waits for data, or 0
	closed  bool
}

func newScriptedReader() *scriptedReader {
	r := &scriptedReader{}
	r.cond = sync.NewCond(&r.mu)
	return r
}

func (r *scriptedReader) Read(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.sizes = append(r.sizes, len(p))
	for len(r.pending) == 0 {
		if r.closed {
			return 0, net.ErrClosed
		}
		r.waiting = len(p)
		r.cond.Broadcast()
		r.cond.Wait()
	}
	r.waiting = 0
	n := copy(p, r.pending)
	r.pending = r.pending[n:]
	return n, nil
}

// cancel ends the reads, as Close's cancelRead does a QUIC stream's.
func (r *scriptedReader) cancel() {
	r.mu.Lock()
	r.closed = true
	r.cond.Broadcast()
	r.mu.Unlock()
}

func (r *scriptedReader) deliver(b []byte) {
	r.mu.Lock()
	r.pending = append(r.pending, b...)
	r.cond.Broadcast()
	r.mu.Unlock()
}

// awaitWaiting waits until a Read waits for data with nothing pending, and
// returns its buffer size and the sizes of all Reads so far.
func (r *scriptedReader) awaitWaiting(t *testing.T) (int, []int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	r.mu.Lock()
	defer r.mu.Unlock()
	for r.waiting == 0 || len(r.pending) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no read waits for data; reads so far: %v", r.sizes)
		}
		r.mu.Unlock()
		time.Sleep(time.Millisecond)
		r.mu.Lock()
	}
	return r.waiting, slices.Clone(r.sizes)
}

// TestStreamWaitsInSmallBuffer: the reader goroutine waits for data in a
// 2 KiB buffer, and goes on in a 32 KiB chunk after a read fills that;
// the bytes come out whole and in order.
func TestStreamWaitsInSmallBuffer(t *testing.T) {
	r := newScriptedReader()
	st := newStream()
	st.r, st.w = r, io.Discard
	st.cancelRead, st.cancelWrite = r.cancel, func() {}
	st.start()
	defer st.Close()

	if size, _ := r.awaitWaiting(t); size != smallChunkSize {
		t.Fatalf("the first read waits in a buffer of %d bytes, want %d", size, smallChunkSize)
	}
	var sent bytes.Buffer
	small := bytes.Repeat([]byte{'s'}, 100)
	sent.Write(small)
	r.deliver(small)
	got := make([]byte, len(small))
	if _, err := io.ReadFull(st, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, small) {
		t.Fatal("the small message came out wrong")
	}
	if size, _ := r.awaitWaiting(t); size != smallChunkSize {
		t.Fatalf("after a short read the reader waits in a buffer of %d bytes, want %d", size, smallChunkSize)
	}

	burst := make([]byte, 40000)
	for i := range burst {
		burst[i] = byte(i * 7)
	}
	sent.Write(burst)
	r.deliver(burst)
	rest := make([]byte, len(burst))
	if _, err := io.ReadFull(st, rest); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(rest, burst) {
		t.Fatal("the burst came out wrong")
	}
	size, sizes := r.awaitWaiting(t)
	if size != smallChunkSize {
		t.Fatalf("after a burst the reader waits in a buffer of %d bytes, want %d", size, smallChunkSize)
	}
	// 100 bytes in the small buffer; then the burst: 2 KiB, 30 KiB on
	// into the big chunk, 2 KiB, the rest (5,184 bytes) into another;
	// then the wait.
	big := chunkSize - smallChunkSize
	want := []int{smallChunkSize, smallChunkSize, big, smallChunkSize, big, smallChunkSize}
	if !slices.Equal(sizes, want) {
		t.Fatalf("read buffer sizes %v, want %v", sizes, want)
	}
}
