package h2mux

import "sync"

// A recvBuf holds what a stream received and its reader has not taken
// yet, in chunks lent by chunkPool: the read loop reads a large DATA
// payload straight into a chunk of its own, and [Stream.SpliceTo] writes a
// chunk straight to its destination, so that a byte is copied once
// between the connection and the stream's destination, as through a
// plain TLS connection. Small payloads are copied into the last chunk
// while it has room, so that chunks stay at least half full and the
// memory a stream holds stays near what its window allows. A stream that
// has read everything holds no chunk.
//
// It is guarded by the session's mutex.
type recvBuf struct {
	chunks []*chunk
	n      int // unread bytes
}

// A chunk is a buffer and its unread part, data[off:end].
type chunk struct {
	data     []byte
	off, end int
}

// chunkSize is the size of pooled chunks: one DATA frame at the default
// SETTINGS_MAX_FRAME_SIZE. Larger frames get a chunk of their own size.
const chunkSize = minFrameSize

var chunkPool = sync.Pool{New: func() any { return &chunk{data: make([]byte, chunkSize)} }}

// newChunk returns an empty chunk of at least n bytes.
func newChunk(n int) *chunk {
	if n > chunkSize {
		return &chunk{data: make([]byte, n)}
	}
	c := chunkPool.Get().(*chunk)
	c.off, c.end = 0, 0
	return c
}

// freeChunk returns c to the pool, if it came from there.
func freeChunk(c *chunk) {
	if len(c.data) == chunkSize {
		chunkPool.Put(c)
	}
}

// push appends c, whose unread part is its data.
func (b *recvBuf) push(c *chunk) {
	b.chunks = append(b.chunks, c)
	b.n += c.end - c.off
}

// append copies p after what b holds.
func (b *recvBuf) append(p []byte) {
	for len(p) > 0 {
		var last *chunk
		if k := len(b.chunks); k > 0 {
			last = b.chunks[k-1]
		}
		if last == nil || last.end == len(last.data) {
			last = newChunk(0)
			b.chunks = append(b.chunks, last)
		}
		n := copy(last.data[last.end:], p)
		last.end += n
		b.n += n
		p = p[n:]
	}
}

// room returns how many bytes append can copy without a new chunk.
func (b *recvBuf) room() int {
	if k := len(b.chunks); k > 0 {
		last := b.chunks[k-1]
		return len(last.data) - last.end
	}
	return 0
}

// read copies unread bytes into p, freeing the chunks it empties.
func (b *recvBuf) read(p []byte) int {
	n := 0
	for len(p) > 0 && len(b.chunks) > 0 {
		c := b.chunks[0]
		m := copy(p, c.data[c.off:c.end])
		c.off += m
		n += m
		p = p[m:]
		if c.off == c.end {
			b.pop()
			freeChunk(c)
		}
	}
	b.n -= n
	return n
}

// take removes and returns the first chunk, whose unread part the caller
// then owns (and frees), or nil.
func (b *recvBuf) take() *chunk {
	if len(b.chunks) == 0 {
		return nil
	}
	c := b.chunks[0]
	b.pop()
	b.n -= c.end - c.off
	return c
}

func (b *recvBuf) pop() {
	b.chunks[0] = nil
	b.chunks = b.chunks[1:]
	if len(b.chunks) == 0 {
		b.chunks = nil
	}
}

// reset frees every chunk and returns how many unread bytes it dropped.
func (b *recvBuf) reset() int {
	n := b.n
	for _, c := range b.chunks {
		freeChunk(c)
	}
	*b = recvBuf{}
	return n
}
