package hello

import (
	"encoding/binary"
	"fmt"
	"io"
)

// ReadRecord reads exactly one TLS handshake record from r: the 5-byte
// header and the payload it announces, and nothing more. It checks the
// header before reading the payload, so a non-TLS peer or an oversized
// length costs at most 5 bytes of reading.
//
// ReadRecord always returns the bytes it consumed, also together with an
// error, so that a relay can forward a connection it will not serve to its
// cover site byte for byte. The errors are [ErrNotHandshake] and
// [ErrRecordTooLarge] (wrapped) for a bad header, [io.ErrUnexpectedEOF]
// (wrapped, together with [ErrTruncated]) when r ends inside the record,
// [io.EOF] when r ends before the first byte, or r's own error.
//
// ReadRecord does not parse the payload; pass the record to [Parse].
func ReadRecord(r io.Reader) ([]byte, error) {
	var hdr [RecordHeaderLen]byte
	n, err := io.ReadFull(r, hdr[:])
	if err != nil {
		return append([]byte(nil), hdr[:n]...), readErr("record header", err)
	}
	if err := checkHeader(hdr[:]); err != nil {
		return append([]byte(nil), hdr[:]...), err
	}
	size := int(binary.BigEndian.Uint16(hdr[3:5]))
	if size > MaxRecordPayload {
		return append([]byte(nil), hdr[:]...), fmt.Errorf("record payload of %d bytes, limit %d: %w", size, MaxRecordPayload, ErrRecordTooLarge)
	}
	rec := make([]byte, RecordHeaderLen+size)
	copy(rec, hdr[:])
	n, err = io.ReadFull(r, rec[RecordHeaderLen:])
	if err == io.EOF {
		err = io.ErrUnexpectedEOF // the header was there
	}
	if err != nil {
		return rec[:RecordHeaderLen+n], readErr("record payload", err)
	}
	return rec, nil
}

// readErr wraps an error of io.ReadFull; a short read becomes both
// io.ErrUnexpectedEOF and ErrTruncated.
func readErr(what string, err error) error {
	if err == io.ErrUnexpectedEOF {
		return fmt.Errorf("read %s: %w (%w)", what, ErrTruncated, err)
	}
	if err == io.EOF {
		return err
	}
	return fmt.Errorf("read %s: %w", what, err)
}
