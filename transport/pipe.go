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
// A conn that is a [WriteSizer] gets writes of at most its size.
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
func copyHalf(dst, src net.Conn, count func(int), abort func()) int64 {
	bufp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bufp)
	buf := *bufp
	if ws, ok := dst.(WriteSizer); ok {
		if n := ws.WriteSize(); n > 0 && n < len(buf) {
			buf = buf[:n]
		}
	}
	var total int64
	for {
		n, rerr := src.Read(buf)
		if n > 0 {
			w, werr := dst.Write(buf[:n])
			total += int64(w)
			if count != nil && w > 0 {
				count(w)
			}
			if werr != nil {
				abort()
				return total
			}
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

var bufPool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}
