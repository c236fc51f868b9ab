package h2mux

import (
	"bytes"
	"math/rand/v2"
	"testing"
)

// TestRecvBuf feeds a recvBuf payloads of random sizes, some as chunks of
// their own (as the read loop does with large ones), takes them out by
// read and take in random steps, and checks the bytes, the count and
// that the chunks are about half full at least.
func TestRecvBuf(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var b recvBuf
	var want, got bytes.Buffer
	next := byte(0)
	for range 2000 {
		n := rng.IntN(chunkSize + 1)
		if rng.IntN(4) == 0 {
			n = rng.IntN(64)
		}
		p := make([]byte, n)
		for i := range p {
			p[i] = next
			next++
		}
		want.Write(p)
		if n > b.room() {
			c := newChunk(n)
			c.end = copy(c.data, p)
			b.push(c)
		} else {
			b.append(p)
		}
		// The chunks are half full, but for the last two: a chunk
		// of its own goes after a last chunk that had no room for it,
		// so the two hold more than one chunk's size.
		held, filled := 0, 0
		for _, c := range b.chunks {
			held += len(c.data)
			filled += c.end
		}
		if held > 2*filled+2*chunkSize {
			t.Fatalf("%d chunks hold %d bytes for %d written", len(b.chunks), held, filled)
		}
		if rng.IntN(3) == 0 {
			continue
		}
		if rng.IntN(2) == 0 {
			if c := b.take(); c != nil {
				got.Write(c.data[c.off:c.end])
				freeChunk(c)
			}
		} else {
			buf := make([]byte, rng.IntN(3*chunkSize))
			got.Write(buf[:b.read(buf)])
		}
		if b.n != want.Len()-got.Len() {
			t.Fatalf("n = %d, want %d", b.n, want.Len()-got.Len())
		}
	}
	rest := make([]byte, b.n)
	got.Write(rest[:b.read(rest)])
	if !bytes.Equal(got.Bytes(), want.Bytes()) {
		t.Fatal("bytes out differ from bytes in")
	}
	if b.n != 0 || len(b.chunks) != 0 {
		t.Fatalf("after reading everything: n %d, %d chunks", b.n, len(b.chunks))
	}
	b.append([]byte("left"))
	if n := b.reset(); n != 4 || b.n != 0 || b.chunks != nil {
		t.Fatalf("reset dropped %d, left n %d and %d chunks", n, b.n, len(b.chunks))
	}
}
