package mtproxy

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"sync"
)

// A TLSConn carries a byte stream in TLS ApplicationData records, as both
// ends of a FakeTLS connection do once the hellos are exchanged. Reads
// return record payloads, skipping ChangeCipherSpec records; an Alert
// record reads as io.EOF. Writes are cut into records of at most 16 KiB,
// none shorter than [MinRecordLen] unless the write is, and sent in one
// write where they fit.
//
// Reads and writes may run concurrently with each other, but not with
// themselves.
type TLSConn struct {
	net.Conn
	r    io.Reader
	left int  // payload bytes left in the record being read
	eof  bool // an alert, or EOF after the last record, was read

	wmu  sync.Mutex
	wbuf []byte
}

// NewTLSConn returns a TLSConn on conn whose reads come from r (conn
// itself if r is nil; a buffered reader over conn when bytes were read
// ahead). It writes no ChangeCipherSpec record of its own: the app's, sent
// before its first ApplicationData record, is the app's to write.
func NewTLSConn(conn net.Conn, r io.Reader) *TLSConn {
	if r == nil {
		r = conn
	}
	return &TLSConn{Conn: conn, r: r}
}

// Read reads application data. It returns what one record holds, and
// continues into the following records as far as their bytes are already
// buffered (when reads come from a *bufio.Reader), so that a reader with a
// large buffer gets large reads: the relay then forwards big chunks.
func (t *TLSConn) Read(p []byte) (int, error) {
	if t.eof {
		return 0, io.EOF
	}
	n := 0
	for n < len(p) {
		if t.left == 0 {
			if n > 0 && t.buffered() < recordHeaderLen+1 {
				break // the next record is not all here: do not block
			}
			if err := t.readHeader(); err != nil {
				if n > 0 && err == io.EOF {
					t.eof = true
					break
				}
				return n, err
			}
			if t.left == 0 {
				continue
			}
		}
		m := min(len(p)-n, t.left)
		if n > 0 {
			if m = min(m, t.buffered()); m == 0 {
				break
			}
		}
		k, err := t.r.Read(p[n : n+m])
		n += k
		t.left -= k
		if err == io.EOF && t.left > 0 {
			return n, fmt.Errorf("mtproxy: record payload: %w", io.ErrUnexpectedEOF)
		}
		if err != nil && err != io.EOF {
			return n, err
		}
		if err == io.EOF {
			break // the next Read reports it at a record boundary
		}
	}
	return n, nil
}

// buffered returns how many bytes can be read without blocking, as far as
// is known.
func (t *TLSConn) buffered() int {
	if br, ok := t.r.(*bufio.Reader); ok {
		return br.Buffered()
	}
	return 0
}

// readHeader reads record headers until one of application data, which it
// leaves in t.left (possibly zero). ChangeCipherSpec records are skipped;
// an alert is io.EOF.
func (t *TLSConn) readHeader() error {
	var hdr [recordHeaderLen]byte
	if _, err := io.ReadFull(t.r, hdr[:]); err != nil {
		if err == io.ErrUnexpectedEOF {
			return fmt.Errorf("mtproxy: record header: %w", err)
		}
		return err
	}
	n := int(binary.BigEndian.Uint16(hdr[3:]))
	switch {
	case hdr[1] != 3:
		return fmt.Errorf("mtproxy: record version %#x%02x", hdr[1], hdr[2])
	case hdr[0] == recordApplication:
		t.left = n
	case hdr[0] == recordChangeCipher && n == 1:
		var b [1]byte
		if _, err := io.ReadFull(t.r, b[:]); err != nil {
			return fmt.Errorf("mtproxy: change cipher spec: %w", noEOF(err))
		}
	case hdr[0] == recordAlert:
		t.eof = true
		return io.EOF
	default:
		return fmt.Errorf("mtproxy: unexpected record type %#x", hdr[0])
	}
	return nil
}

func noEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
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
	sent, batched := 0, 0
	b := t.wbuf[:0]
	defer func() { t.wbuf = b[:0] }()
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
