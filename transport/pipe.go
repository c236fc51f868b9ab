package transport

import (
	"errors"
	"io"
	"net"
	"sync"
)

// Splice copies bytes between a and b in both directions until both
// directions have ended, then closes both. When one direction reaches EOF,
// the write side of the other conn is half-closed (CloseWrite, where the
// conn has it) so the peer sees EOF while the opposite direction goes on.
// When one direction fails, both conns are closed at once.
//
// A conn that is a [WriteSizer] gets writes of at most its size, one
// that is a [HeadroomWriter] the free bytes it asks for before each, and
// one that is a [WriteGate] is waited on before each read that follows
// one of a big buffer's worth.
//
// count, if not nil, is called from both copying goroutines with each chunk
// of bytes written, for accounting; it must be safe for concurrent use.
// Splice returns the bytes copied a→b and b→a.
func Splice(a, b net.Conn, count func(n int)) (aToB, bToA int64) {
	var wg sync.WaitGroup
	wg.Add(2)
	var once sync.Once
	abort := func() {
		once.Do(func() {
			a.Close()
			b.Close()
		})
	}
	go func() {
		defer wg.Done()
		aToB = copyHalf(b, a, count, abort)
	}()
	go func() {
		defer wg.Done()
		bToA = copyHalf(a, b, count, abort)
	}()
	wg.Wait()
	a.Close()
	b.Close()
	return aToB, bToA
}

type closeWriter interface{ CloseWrite() error }

// copyHalf copies src to dst. On a clean EOF from src it half-closes dst;
// on any other error it aborts both conns.
//
// A relay's many quiet streams (Telegram keeps connections open for
// hours) must not each hold a big buffer per direction. copyHalf reads
// into a small buffer of its own and takes a big one from the pool only
// while reads fill the small one, giving it back after a short read. A
// burst that ends with a longer read would leave the big buffer held by
// the read that waits for the next burst: where src can wait for data
// without a buffer (a TCP conn, a [ReadWaiter]), copyHalf gives the big
// buffer back after any read that did not fill it (src was drained), and
// takes it again only once more data is there.
func copyHalf(dst, src net.Conn, count func(int), abort func()) int64 {
	if sp, ok := src.(Splicer); ok {
		total, err := sp.SpliceTo(dst, count)
		if err == nil {
			if c, ok := dst.(closeWriter); ok && c.CloseWrite() == nil {
				return total
			}
		}
		abort()
		return total
	}
	size := bigBuf
	if ws, ok := dst.(WriteSizer); ok {
		if n := ws.WriteSize(); n > 0 && n < size {
			size = n
		}
	}
	// Free bytes before the data, where dst wants them (a
	// HeadroomWriter): buf starts head bytes into base, its array.
	head := 0
	hw, _ := dst.(HeadroomWriter)
	if hw != nil {
		if head = hw.WriteHeadroom(); head < 0 || head > maxHeadroom {
			head = 0
		}
	}
	wait := waiter(src) // nil where src cannot wait for data without a buffer
	gate, _ := dst.(WriteGate)
	small := make([]byte, head+smallBuf)
	base := small
	buf := small[head:]
	var bufp *[]byte
	defer func() {
		if bufp != nil {
			bufPool.Put(bufp)
		}
	}()
	var total int64
	drained := false // a read did not fill the big buffer: wait before taking it again
	// The last read filled the big buffer: src streams data to dst,
	// which, a WriteGate, may have it wait its turn before the next read.
	// A message, even one of tens of KiB, goes on without waiting.
	bulk := false
	for {
		if drained {
			drained = false
			if wait() {
				bufp = bufPool.Get().(*[]byte)
				base = *bufp
				buf = base[head : head+size]
			}
		}
		if bulk && gate != nil {
			gate.WaitWrite()
		}
		n, rerr := src.Read(buf)
		bulk = bufp != nil && n == size
		if n > 0 {
			var w int
			var werr error
			if head > 0 {
				w, werr = hw.WriteWithHeadroom(base[:head+n], head)
			} else {
				w, werr = dst.Write(buf[:n])
			}
			total += int64(w)
			if count != nil && w > 0 {
				count(w)
			}
			if werr != nil {
				abort()
				return total
			}
		}
		switch {
		case bufp == nil && n == len(buf):
			bufp = bufPool.Get().(*[]byte)
			base = *bufp
			buf = base[head : head+size]
		case bufp != nil && (n < size/8 || wait != nil && n < len(buf)):
			bufPool.Put(bufp)
			bufp, base, buf = nil, small, small[head:]
			drained = n >= size/8
		}
		if rerr != nil {
			if errors.Is(rerr, io.EOF) {
				if cw, ok := dst.(closeWriter); ok && cw.CloseWrite() == nil {
					return total
				}
			}
			// A failure, or EOF towards a conn that cannot half-close:
			// ending both directions is all that is left.
			abort()
			return total
		}
	}
}

// Buffer sizes of copyHalf: the big one is what a TLS tunnel's copy loop
// reads at a time, 64 KiB; maxHeadroom is the most free room a
// [HeadroomWriter] gets before it.
const (
	smallBuf    = 2 << 10
	bigBuf      = 64 << 10
	maxHeadroom = 64
)

var bufPool = sync.Pool{New: func() any { b := make([]byte, bigBuf+maxHeadroom); return &b }}
