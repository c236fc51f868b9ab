package mtproxy

import (
	"encoding/binary"
	"math/rand/v2"
)

// MinRecordLen is the shortest ApplicationData record a relay sends an app:
// 17 bytes, the shortest record a TLS 1.3 server can send (a content type
// byte and a 16-byte AEAD tag around empty content, RFC 8446 Section 5.2).
// A shorter record marks the connection as FakeTLS.
const MinRecordLen = 17

// nopMin and nopMax bound the length of a NOP packet of the padded
// intermediate transport, length field included: a zero word, an optional
// random word and 0-3 bytes of padding, as MTProxy itself sends them.
const (
	nopMin = 4 + 4
	nopMax = 4 + 8 + 3
)

// maxPacket bounds the MTProto transport packets a shaper expects: far
// above any message a datacenter sends (its limit is 1 MiB of payload).
// A longer one means the stream is not MTProto framing at all.
const maxPacket = 1 << 24

// A shaper cuts the plaintext MTProto transport stream a datacenter sends
// (abridged, intermediate or padded intermediate framing) into the chunks
// a relay writes to an app, each of which [TLSConn.Write] sends as records,
// so that no record is shorter than [MinRecordLen] and no packet waits:
//
//   - Complete packets go out at once, as many as are ready, in one chunk.
//   - Of a packet still arriving, the bytes at hand go out too, except for
//     the last few: enough are held back that, with what is still to come,
//     they make at least MinRecordLen bytes. The app cannot use a packet
//     before its last byte anyway, so holding them delays nothing.
//   - Complete packets that make less than MinRecordLen bytes on their own
//     (a 4-byte quick ack, an 8-byte transport error) get NOP packets after
//     them in padded intermediate framing, which every app speaks with a
//     FakeTLS secret. A NOP is a packet whose payload, shorter than 16
//     bytes, starts with a zero word: Telegram's MTProxy sends such packets
//     after its quick acks, and tdlib, the Android, iOS and desktop apps all
//     skip them. The other two framings have no such packet, and a lone
//     tiny packet goes out as it is: no stock app speaks them over FakeTLS.
//
// The shaper reads lengths from the datacenter's bytes and never allocates
// by them: what it holds between calls is always under 2*MinRecordLen
// bytes, in an array of its own. A call borrows a buffer for the chunk it
// returns, which release gives back.
type shaper struct {
	proto Protocol
	// raw is set once the stream turned out not to be MTProto framing
	// (a length no datacenter sends): from then on bytes pass as they
	// come.
	raw  bool
	buf  []byte // received bytes not yet sent; whole packet headers only
	held [2 * MinRecordLen]byte
	big  *[]byte // borrowed by push or end for buf and the chunk
	hdr  [4]byte
	nhdr int // bytes of the current packet's header so far, held in hdr
	left int // payload bytes of the current packet still to come
	// start is where the packet being received starts in buf, 0 if it
	// started in bytes already sent.
	start int
}

// shaperSlack is the room a chunk needs beyond the bytes pushed: the held
// bytes, a packet header and NOP packets.
const shaperSlack = 2*MinRecordLen + 4 + 2*nopMax

func newShaper(p Protocol) *shaper {
	s := &shaper{proto: p}
	s.buf = s.held[:0]
	return s
}

// take borrows a buffer for a call and moves the held bytes into it.
func (s *shaper) take() {
	s.release()
	s.big = getBuf()
	s.buf = append((*s.big)[:0], s.buf...)
}

// release gives back the buffer of the last chunk returned; the chunk is
// then no longer valid.
func (s *shaper) release() {
	if s.big != nil {
		putBuf(s.big)
		s.big = nil
	}
}

// push takes the next plaintext bytes from the datacenter and returns what
// may be sent to the app now, possibly nothing. The chunk is valid until
// the next call or release.
func (s *shaper) push(p []byte) []byte {
	if s.raw {
		return p
	}
	s.take()
	for len(p) > 0 {
		if s.left > 0 {
			n := min(s.left, len(p))
			s.buf = append(s.buf, p[:n]...)
			s.left -= n
			p = p[n:]
			continue
		}
		s.hdr[s.nhdr] = p[0]
		s.nhdr++
		p = p[1:]
		if payload, ok := s.header(); ok {
			if payload > maxPacket {
				// Not MTProto framing: pass everything on, held bytes
				// first, rather than wait for a packet that never ends.
				s.raw = true
				out := append(s.buf, s.hdr[:s.nhdr]...)
				out = append(out, p...)
				s.buf, s.nhdr, s.left = s.held[:0], 0, 0
				return out
			}
			s.start = len(s.buf)
			s.buf = append(s.buf, s.hdr[:s.nhdr]...)
			s.nhdr = 0
			s.left = payload
		}
	}
	return s.cut(s.ready())
}

// header reports whether hdr[:nhdr] is a whole packet header and, if so,
// how many payload bytes follow it. A quick ack is a header with none
// (core.telegram.org/mtproto/mtproto-transports#quick-ack).
func (s *shaper) header() (payload int, ok bool) {
	if s.proto == Abridged {
		switch b := s.hdr[0]; {
		case b&0x80 != 0: // quick ack, 4 bytes
			return 0, s.nhdr == 4
		case b == 0x7f:
			if s.nhdr < 4 {
				return 0, false
			}
			return 4 * (int(s.hdr[1]) | int(s.hdr[2])<<8 | int(s.hdr[3])<<16), true
		default:
			return 4 * int(b), true
		}
	}
	if s.nhdr < 4 {
		return 0, false
	}
	n := binary.LittleEndian.Uint32(s.hdr[:])
	if n&(1<<31) != 0 { // quick ack
		return 0, true
	}
	return int(n), true
}

// boundary returns how many bytes at the start of buf are whole packets.
func (s *shaper) boundary() int {
	if s.left > 0 {
		return s.start
	}
	return len(s.buf)
}

// ready returns how many bytes of buf to send now, and whether they end at
// a packet boundary, where NOP packets may follow them.
func (s *shaper) ready() (n int, boundary bool) {
	if s.nhdr == 0 && s.left == 0 { // all of buf is whole packets
		return len(s.buf), true
	}
	// Bytes still to come of the packet being received: its payload, or
	// at least the rest of its header (a header held in part is always a
	// 4-byte one).
	rest := s.left
	if s.nhdr > 0 {
		rest = 4 - s.nhdr
	}
	// Send whole packets and as much of the packet being received as
	// leaves, with what is still to come, a record of MinRecordLen; or
	// else just the whole packets.
	b := s.boundary()
	n = min(len(s.buf), len(s.buf)+s.nhdr+rest-MinRecordLen)
	if n >= b && n >= MinRecordLen {
		return n, false
	}
	return b, true
}

// end returns what to send when the datacenter has finished: the whole
// packets held, and a packet it cut short if that makes at least
// MinRecordLen bytes with them; a shorter cut-off packet is dropped, as
// the app could not have used it.
func (s *shaper) end() []byte {
	if s.raw {
		return nil
	}
	s.take()
	b := s.boundary()
	s.buf = append(s.buf, s.hdr[:s.nhdr]...)
	s.nhdr, s.left = 0, 0
	if len(s.buf) >= MinRecordLen {
		return s.cut(len(s.buf), false)
	}
	s.buf = s.buf[:b]
	return s.cut(b, true)
}

// cut takes the first n bytes of buf as the next chunk, and moves the
// rest back into the shaper's own array. If they end at a packet boundary
// and make less than MinRecordLen bytes, NOP packets follow them, where
// the framing has them.
func (s *shaper) cut(n int, boundary bool) []byte {
	out := s.buf[:n]
	s.buf = append(s.held[:0], s.buf[n:]...)
	if n == 0 {
		return nil
	}
	if boundary && s.proto == PaddedIntermediate {
		out = s.appendNOPs(out)
	}
	s.start = max(0, s.start-n)
	return out
}

// appendNOPs appends NOP packets of random sizes to b until it is
// MinRecordLen bytes long or more.
func (s *shaper) appendNOPs(b []byte) []byte {
	for len(b) < MinRecordLen {
		lo := max(nopMin, MinRecordLen-len(b))
		size := nopMax
		if lo < nopMax {
			size = lo + rand.IntN(nopMax-lo+1)
		}
		b = binary.LittleEndian.AppendUint32(b, uint32(size-4))
		b = append(b, 0, 0, 0, 0)
		var noise [8]byte
		binary.LittleEndian.PutUint64(noise[:], rand.Uint64())
		b = append(b, noise[:size-8]...)
	}
	return b
}
