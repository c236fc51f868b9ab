package mtproxy

import "sync"

// bufSize is the size of the buffers writes borrow: a TLSConn's largest
// batch, four full records with their headers.
const bufSize = maxWriteBatch

// bufs lends writes their buffers only while they run, so that an idle
// connection holds none.
var bufs = sync.Pool{New: func() any { b := make([]byte, 0, bufSize); return &b }}

func getBuf() *[]byte { return bufs.Get().(*[]byte) }

// putBuf gives bp back, unless it outgrew bufSize (a write longer than a
// batch): the pool keeps buffers of one size.
func putBuf(bp *[]byte) {
	if cap(*bp) != bufSize {
		return
	}
	*bp = (*bp)[:0]
	bufs.Put(bp)
}
