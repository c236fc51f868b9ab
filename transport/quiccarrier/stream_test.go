package quiccarrier

import (
	"bytes"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// scriptedReader gives what was delivered to it, as much as each Read's
// buffer takes, as a QUIC stream does.
type scriptedReader struct {
	mu      sync.Mutex
	cond    *sync.Cond
	pending []byte
	waiting bool // a Read waits for data
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
	for len(r.pending) == 0 {
		if r.closed {
			return 0, net.ErrClosed
		}
		r.waiting = true
		r.cond.Broadcast()
		r.cond.Wait()
	}
	r.waiting = false
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

// awaitWaiting waits until a Read waits for data with nothing pending.
func (r *scriptedReader) awaitWaiting(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	r.mu.Lock()
	defer r.mu.Unlock()
	for !r.waiting || len(r.pending) > 0 {
		if time.Now().After(deadline) {
			t.Fatal("no read waits for data")
		}
		r.mu.Unlock()
		time.Sleep(time.Millisecond)
		r.mu.Lock()
	}
}

// TestStreamHandsOnEachRead: what each read of the underlying stream
// brings reaches the stream's reader at once, whole and in order, without
// waiting for more (a peer may be waiting for an answer to it), whatever
// its size against the read buffers.
func TestStreamHandsOnEachRead(t *testing.T) {
	r := newScriptedReader()
	st := newStream()
	st.r, st.w = r, io.Discard
	st.cancelRead, st.cancelWrite = r.cancel, func() {}
	st.start()
	defer st.Close()
	st.SetReadDeadline(time.Now().Add(10 * time.Second))

	seq := 0
	for i, size := range []int{100, 2 << 10, 40000, chunkSize, 1, chunkSize + 1, 2<<10 - 1} {
		msg := make([]byte, size)
		for j := range msg {
			msg[j] = byte(seq)
			seq = seq*7 + 3
		}
		r.deliver(msg)
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(st, got); err != nil {
			t.Fatalf("message %d: reading %d bytes: %v", i, len(msg), err)
		}
		if !bytes.Equal(got, msg) {
			t.Fatalf("message %d: %d bytes came out wrong", i, len(msg))
		}
		r.awaitWaiting(t)
	}
}
