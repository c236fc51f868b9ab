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
// 2 KiB buffer after a read of less than that, in a 32 KiB one after a
// read that filled 2 KiB or more; it hands on each read at once, so that a
// message of exactly 2 KiB is not held back waiting for more; the bytes
// come out whole and in order.
func TestStreamWaitsInSmallBuffer(t *testing.T) {
	r := newScriptedReader()
	st := newStream()
	st.r, st.w = r, io.Discard
	st.cancelRead, st.cancelWrite = r.cancel, func() {}
	st.start()
	defer st.Close()
	st.SetReadDeadline(time.Now().Add(10 * time.Second))

	steps := []struct {
		size int // delivered at once
		wait int // the buffer of the read that waits afterwards
	}{
		{0, smallChunkSize},   // nothing yet
		{100, smallChunkSize}, // a small message
		{2048, chunkSize},     // exactly the small buffer: handed on, not held
		{40000, chunkSize},    // a burst: 32 KiB, then 7,232 bytes
		{100, smallChunkSize}, // small again
		{smallChunkSize - 1, smallChunkSize},
	}
	seq := 0
	for i, step := range steps {
		msg := make([]byte, step.size)
		for j := range msg {
			msg[j] = byte(seq)
			seq = seq*7 + 3
		}
		if step.size > 0 {
			r.deliver(msg)
			got := make([]byte, len(msg))
			if _, err := io.ReadFull(st, got); err != nil {
				t.Fatalf("step %d: reading %d bytes: %v", i, len(msg), err)
			}
			if !bytes.Equal(got, msg) {
				t.Fatalf("step %d: %d bytes came out wrong", i, len(msg))
			}
		}
		if size, sizes := r.awaitWaiting(t); size != step.wait {
			t.Fatalf("step %d (%d bytes): the reader waits in a buffer of %d bytes, want %d (reads so far: %v)", i, step.size, size, step.wait, sizes)
		}
	}
}
