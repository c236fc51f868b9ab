package mtproxy

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"sync"

	"github.com/merpati/merpati/transport"
)

// A TLSConn carries a byte stream in TLS ApplicationData records, as both
// ends of a FakeTLS connection do once the hellos are exchanged. Reads
// return record payloads, skipping ChangeCipherSpec records; an Alert
// record reads as io.EOF. Writes are cut into records of at most 16 KiB,
// none shorter than [MinRecordLen] unless the write is, and sent in one
// write where they fit.
//
// A TLSConn holds no buffer while idle: a Read reads the connection
// straight into its caller's buffer and takes the record headers out in
// place, and a Write borrows its buffer from a pool.
//
// Reads and writes may run concurrently with each other, but not with
// themselves.
type TLSConn struct {
	net.Conn
	ahead io.Reader // bytes read ahead of the records, read first; nil once drained
	hdr   [recordHeaderLen]byte
	nhdr  int   // bytes of a record header read so far
	left  int   // payload bytes left in the record being read
	skip  bool  // the record being read is a ChangeCipherSpec: its byte is dropped
	eof   bool  // an alert was read
	rerr  error // a read error held back while bytes read with it are returned

	wmu sync.Mutex
}

// NewTLSConn returns a TLSConn on conn whose reads come first from r, if
// r is not nil: a reader over conn that read bytes ahead (a
// *bufio.Reader, which the TLSConn lets go once it has nothing buffered;
// any other reader is read until it ends). It writes no ChangeCipherSpec
// record of its own: the app's, sent before its first ApplicationData
// record, is the app's to write.
func NewTLSConn(conn net.Conn, r io.Reader) *TLSConn {
	return &TLSConn{Conn: conn, ahead: r}
}

// Read reads application data: the payloads of as many records as one
// read of the connection brings, up to len(p).
func (t *TLSConn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	for {
		if t.eof {
			return 0, io.EOF
		}
		if t.rerr != nil {
			return 0, t.rerr
		}
		n, err := t.src().Read(p)
		k, perr := t.strip(p[:n])
		if perr != nil {
			t.rerr = perr
			return k, perr
		}
		if err == io.EOF && t.ahead != nil {
			t.ahead, err = nil, nil // what was read ahead has ended: on to conn
		}
		if err != nil {
			if err == io.EOF && (t.left > 0 || t.nhdr > 0) {
				err = fmt.Errorf("mtproxy: record: %w", io.ErrUnexpectedEOF)
			}
			t.rerr = err
		}
		if k > 0 || t.eof {
			return k, nil
		}
	}
}

// WaitRead waits until a Read would not block (see
// [transport.ReadWaiter]): at once if an end or bytes read ahead are
// there, else as the conn waits.
func (t *TLSConn) WaitRead() bool {
	if t.eof || t.rerr != nil {
		return true
	}
	if r := t.readAhead(); r != nil {
		// At once from a *bufio.Reader, which holds its bytes;
		// another reader's Read might block.
		_, buffered := r.(*bufio.Reader)
		return buffered
	}
	return transport.WaitRead(t.Conn)
}

// src returns what to read next: the bytes read ahead, while some are
// left, else the connection.
func (t *TLSConn) src() io.Reader {
	if r := t.readAhead(); r != nil {
		return r
	}
	return t.Conn
}

// readAhead returns the reader of the bytes read ahead while some are
// left (as far as is known), else nil: a drained *bufio.Reader is let go.
func (t *TLSConn) readAhead() io.Reader {
	if br, ok := t.ahead.(*bufio.Reader); ok && br.Buffered() == 0 {
		t.ahead = nil
	}
	return t.ahead
}

// strip takes the record headers (and ChangeCipherSpec payloads) out of
// b, the next bytes read, moving the application data to the front, and
// returns its length. After an alert the rest is dropped.
func (t *TLSConn) strip(b []byte) (int, error) {
	w := 0
	for i := 0; i < len(b); {
		if t.left > 0 {
			m := min(t.left, len(b)-i)
			if !t.skip {
				w += copy(b[w:], b[i:i+m])
			}
			t.left -= m
			i += m
			continue
		}
		t.hdr[t.nhdr] = b[i]
		t.nhdr++
		i++
		if t.nhdr < recordHeaderLen {
			continue
		}
		t.nhdr = 0
		n := int(binary.BigEndian.Uint16(t.hdr[3:]))
		switch typ := t.hdr[0]; {
		case t.hdr[1] != 3:
			return w, fmt.Errorf("mtproxy: record version %#x%02x", t.hdr[1], t.hdr[2])
		case typ == recordApplication:
			t.left, t.skip = n, false
		case typ == recordChangeCipher && n == 1:
			t.left, t.skip = n, true
		case typ == recordAlert:
			t.eof = true
			return w, nil
		default:
			return w, fmt.Errorf("mtproxy: unexpected record type %#x", typ)
		}
	}
	return w, nil
}

// maxWriteBatch bounds the bytes Write buffers before writing to the conn.
const maxWriteBatch = 4 * (maxPayload + recordHeaderLen)

// Write sends p as ApplicationData records of at most 16 KiB each, in as
// few writes to the conn as fit in its batch. No record is shorter than
// [MinRecordLen] unless p itself is. It returns how many bytes of p went
// out in whole batches.
func (t *TLSConn) Write(p []byte) (int, error) {
	t.wmu.Lock()
	defer t.wmu.Unlock()
	bp := getBuf()
	defer putBuf(bp)
	sent, batched := 0, 0
	b := (*bp)[:0]
	defer func() { *bp = b[:0] }()
	for len(p) > 0 {
		n := recordLen(len(p))
		b = append(b, recordApplication, version12[0], version12[1], byte(n>>8), byte(n))
		b = append(b, p[:n]...)
		p = p[n:]
		batched += n
		if len(p) == 0 || len(b)+recordHeaderLen+recordLen(len(p)) > maxWriteBatch {
			if _, err := t.Conn.Write(b); err != nil {
				return sent, err
			}
			sent += batched
			batched = 0
			b = b[:0]
		}
	}
	return sent, nil
}

// recordLen returns the payload length of the next record for m bytes:
// all of them if they fit, else a full record, or a little less where the
// rest would make a record shorter than MinRecordLen.
func recordLen(m int) int {
	n := min(m, maxPayload)
	if rest := m - n; rest > 0 && rest < MinRecordLen {
		n = m - MinRecordLen
	}
	return n
}

// CloseWrite half-closes the underlying conn, if it can.
func (t *TLSConn) CloseWrite() error { return closeWrite(t.Conn) }
