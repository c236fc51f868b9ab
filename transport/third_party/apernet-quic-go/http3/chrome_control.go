package http3

// merpati: this file is patch 9 (README.merpati.md): a client control stream
// laid out as Chromium's.

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptrace"
	"slices"
	"strings"

	"github.com/apernet/quic-go"
	"github.com/apernet/quic-go/quicvarint"
)

// Setting is one HTTP/3 setting (RFC 9114 section 7.2.4), for
// [Transport.Settings].
type Setting struct {
	ID    uint64
	Value uint64
}

// frameTypePriorityUpdateRequest is the type of a PRIORITY_UPDATE frame for
// a request stream (RFC 9218 section 7.1).
const frameTypePriorityUpdateRequest = 0xf0700

// controlOptions are a client's Transport.Settings, Grease and
// PriorityUpdate.
type controlOptions struct {
	settings       []Setting
	grease         bool
	priorityUpdate bool
}

// greaseType returns a reserved setting identifier or frame type,
// 0x1f*N + 0x21 (RFC 9114 sections 7.2.4.1 and 7.2.8), and N, a random
// 32-bit number, as Chromium picks them.
func greaseType() (uint64, uint32) {
	n := randUint32()
	return 0x1f*uint64(n) + 0x21, n
}

func randUint32() uint32 {
	var b [4]byte
	rand.Read(b[:]) // never fails (crypto/rand)
	return binary.BigEndian.Uint32(b[:])
}

// appendControlStream appends what the client's control stream starts
// with: its type, then a SETTINGS frame with o.settings in their order and,
// with o.grease, a reserved setting with a random 32-bit value at the end,
// then, with o.grease, a frame of a reserved type with N mod 4 random bytes
// (N of the type). Chromium sends just this, in one STREAM frame; it sorts
// its settings by identifier, which puts the reserved one last unless N is
// 0.
func (o *controlOptions) appendControlStream(b []byte) []byte {
	b = quicvarint.Append(b, streamTypeControlStream)
	settings := o.settings
	if o.grease {
		id, _ := greaseType()
		settings = append(slices.Clone(settings), Setting{ID: id, Value: uint64(randUint32())})
	}
	var l int
	for _, s := range settings {
		l += quicvarint.Len(s.ID) + quicvarint.Len(s.Value)
	}
	b = quicvarint.Append(b, 0x4)
	b = quicvarint.Append(b, uint64(l))
	for _, s := range settings {
		b = quicvarint.Append(b, s.ID)
		b = quicvarint.Append(b, s.Value)
	}
	if o.grease {
		typ, n := greaseType()
		payload := make([]byte, n%4)
		rand.Read(payload)
		b = quicvarint.Append(b, typ)
		b = quicvarint.Append(b, uint64(len(payload)))
		b = append(b, payload...)
	}
	return b
}

// appendPriorityUpdate appends a PRIORITY_UPDATE frame for request stream
// id with the Priority Field Value v (RFC 9218 section 7.1).
func appendPriorityUpdate(b []byte, id quic.StreamID, v string) []byte {
	b = quicvarint.Append(b, frameTypePriorityUpdateRequest)
	b = quicvarint.Append(b, uint64(quicvarint.Len(uint64(id))+len(v)))
	b = quicvarint.Append(b, uint64(id))
	return append(b, v...)
}

// openOrderedControlStream opens the control stream and writes its first
// frames (see appendControlStream). It runs before newClientConn returns,
// so that no request's PRIORITY_UPDATE can come first.
func (c *ClientConn) openOrderedControlStream() error {
	str, err := c.conn.OpenUniStream()
	if err != nil {
		return fmt.Errorf("open control stream: %w", err)
	}
	c.controlMx.Lock()
	defer c.controlMx.Unlock()
	c.controlStr = str
	if _, err := str.Write(c.control.appendControlStream(nil)); err != nil {
		return fmt.Errorf("write SETTINGS: %w", err)
	}
	return nil
}

// writeHeaderWithPriority writes the HEADERS frame of rs's request req
// and, when req has a Priority header field that is not the default ("u=3":
// urgency 3, not incremental), a PRIORITY_UPDATE frame for rs's stream with
// that field before it on the control stream, as Chromium does; the two go
// in one packet, after the datagram with the client's Finished (which the
// quic package holds for at most a few milliseconds), so that the frame
// never joins the SETTINGS in it.
func (c *ClientConn) writeHeaderWithPriority(rs *RequestStream, req *http.Request, gzip bool) error {
	v := strings.Join(req.Header.Values("Priority"), ", ")
	if v == "" || v == "u=3" {
		return rs.requestWriter.WriteRequestHeader(rs.str.datagramStream, req, gzip, rs.str.StreamID(), rs.str.qlogger)
	}
	select {
	case <-c.conn.FinishedSent():
	case <-c.conn.Context().Done():
		return context.Cause(c.conn.Context())
	case <-req.Context().Done():
		return req.Context().Err()
	}
	var headers bytes.Buffer
	if err := rs.requestWriter.writeHeaders(&headers, req, gzip, rs.str.StreamID(), rs.str.qlogger); err != nil {
		return err
	}
	update := appendPriorityUpdate(nil, rs.str.StreamID(), v)
	// Queued without blocking, so that both leave together; whatever
	// cannot be is written the usual way after.
	var updateErr, headersErr error
	c.controlMx.Lock()
	defer c.controlMx.Unlock()
	if c.controlStr == nil {
		return errors.New("http3: no control stream for PRIORITY_UPDATE")
	}
	c.conn.SendTogether(func() {
		if updateErr = c.controlStr.TryWriteAll(update); updateErr == nil {
			headersErr = rs.str.datagramStream.QUICStream().TryWriteAll(headers.Bytes())
		}
	})
	if updateErr != nil {
		if _, err := c.controlStr.Write(update); err != nil {
			return fmt.Errorf("http3: send PRIORITY_UPDATE: %w", err)
		}
	}
	if updateErr != nil || headersErr != nil {
		if _, err := rs.str.datagramStream.Write(headers.Bytes()); err != nil {
			return err
		}
	}
	traceWroteHeaders(httptrace.ContextClientTrace(req.Context()))
	return nil
}
