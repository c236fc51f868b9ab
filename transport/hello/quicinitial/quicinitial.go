// Package quicinitial reads what anyone on the path can read of a QUIC
// client's first flight: the packet headers, and the ClientHello inside its
// Initial packets, whose keys derive from the public destination
// connection ID (RFC 9001 section 5.2).
//
// The relay's QUIC front door uses it on untrusted datagrams to decide,
// from a client's first Initial, whether the connection is a key holder's
// (handed to the relay's QUIC server) or anyone else's (relayed to the
// cover site's own UDP port untouched); tests use it to compare our
// client's Initials with Chromium's. Only QUIC version 1 is decrypted.
//
// Parsing bounds everything by the input: a [Collector] holds at most
// [MaxCrypto] bytes of CRYPTO data, and no length field is trusted before
// it has been checked against the bytes that are there.
package quicinitial

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
)

// Version1 is QUIC version 1 (RFC 9000).
const Version1 = 0x00000001

// MaxCrypto bounds the CRYPTO stream a [Collector] reassembles: far above
// any ClientHello a browser sends (Chromium's, with an ML-KEM key share,
// is about 1.9 KB), far below what would let a sender make the relay hold
// much memory per flow.
const MaxCrypto = 8 << 10

// Long header packet types (RFC 9000 section 17.2).
const (
	TypeInitial   = 0
	Type0RTT      = 1
	TypeHandshake = 2
	TypeRetry     = 3
)

// Errors for datagrams that are not a client's Initial in a form this
// package reads.
var (
	ErrShort   = errors.New("quicinitial: truncated packet")
	ErrVersion = errors.New("quicinitial: not QUIC version 1")
	ErrNotInit = errors.New("quicinitial: not an Initial packet")
	ErrDecrypt = errors.New("quicinitial: Initial packet does not decrypt")
	ErrFrame   = errors.New("quicinitial: malformed frame")
)

// initialSaltV1 is the QUIC version 1 Initial salt (RFC 9001 section 5.2).
var initialSaltV1 = []byte{0x38, 0x76, 0x2c, 0xf7, 0xf5, 0x59, 0x34, 0xb3, 0x4d, 0x17, 0x9a, 0xe6, 0xa4, 0xc8, 0x0c, 0xad, 0xcc, 0xbb, 0x7f, 0x0a}

// Header is the unprotected part of a long header packet (RFC 9000
// section 17.2).
type Header struct {
	Type    int    // TypeInitial, ...
	Version uint32 // 0 for a version negotiation packet
	DCID    []byte // destination connection ID
	SCID    []byte // source connection ID
	// Token is an Initial packet's token; nil for other types.
	Token []byte
	// PayloadOffset is where the packet number starts; Len is the whole
	// packet's length within its datagram (header, packet number and
	// payload), so that a datagram's next coalesced packet starts there.
	PayloadOffset, Len int
}

// IsLong reports whether a datagram starts with a long header packet.
func IsLong(d []byte) bool { return len(d) > 0 && d[0]&0x80 != 0 }

// ParseLong parses the long header packet at the start of d. For a
// version negotiation packet (version 0) and a Retry packet Len is
// len(d).
func ParseLong(d []byte) (Header, error) {
	var h Header
	if len(d) < 7 || !IsLong(d) {
		return h, ErrShort
	}
	h.Version = binary.BigEndian.Uint32(d[1:5])
	h.Type = int(d[0]>>4) & 3
	p := 5
	dl := int(d[p])
	p++
	if dl > 20 && h.Version == Version1 || len(d) < p+dl+1 {
		return h, ErrShort
	}
	h.DCID = d[p : p+dl]
	p += dl
	sl := int(d[p])
	p++
	if sl > 20 && h.Version == Version1 || len(d) < p+sl {
		return h, ErrShort
	}
	h.SCID = d[p : p+sl]
	p += sl
	if h.Version == 0 || h.Type == TypeRetry {
		h.PayloadOffset, h.Len = p, len(d)
		return h, nil
	}
	if h.Type == TypeInitial {
		tl, n, err := varint(d[p:])
		if err != nil || uint64(len(d)-p-n) < tl {
			return h, ErrShort
		}
		p += n
		h.Token = d[p : p+int(tl)]
		p += int(tl)
	}
	length, n, err := varint(d[p:])
	if err != nil || uint64(len(d)-p-n) < length {
		return h, ErrShort
	}
	p += n
	h.PayloadOffset, h.Len = p, p+int(length)
	return h, nil
}

// ShortDCID returns the destination connection ID of a short header
// packet whose receiver uses n-byte connection IDs.
func ShortDCID(d []byte, n int) ([]byte, bool) {
	if len(d) < 1+n || d[0]&0xc0 != 0x40 {
		return nil, false
	}
	return d[1 : 1+n], true
}

// keys are a client's Initial packet protection keys.
type keys struct {
	aead cipher.AEAD
	iv   [12]byte
	hp   cipher.Block
}

// expandLabel is HKDF-Expand-Label of TLS 1.3 (RFC 8446 section 7.1) with
// an empty context.
func expandLabel(secret []byte, label string, n int) []byte {
	full := "tls13 " + label
	info := make([]byte, 0, 4+len(full))
	info = append(info, byte(n>>8), byte(n), byte(len(full)))
	info = append(info, full...)
	info = append(info, 0)
	out, err := hkdf.Expand(sha256.New, secret, string(info), n)
	if err != nil {
		panic(err) // only for n beyond 255 hash lengths
	}
	return out
}

func newKeys(dcid []byte) *keys {
	prk, err := hkdf.Extract(sha256.New, dcid, initialSaltV1)
	if err != nil {
		panic(err) // SHA-256 is always allowed
	}
	secret := expandLabel(prk, "client in", 32)
	block, _ := aes.NewCipher(expandLabel(secret, "quic key", 16))
	aead, _ := cipher.NewGCM(block)
	hp, _ := aes.NewCipher(expandLabel(secret, "quic hp", 16))
	k := &keys{aead: aead, hp: hp}
	copy(k.iv[:], expandLabel(secret, "quic iv", 12))
	return k
}

// open removes header protection from and decrypts the packet pkt (a
// copy, which it modifies), whose header is h.
func (k *keys) open(pkt []byte, h Header) ([]byte, error) {
	p := h.PayloadOffset
	if len(pkt) < p+4+16 {
		return nil, ErrShort
	}
	var mask [16]byte
	k.hp.Encrypt(mask[:], pkt[p+4:p+20])
	pkt[0] ^= mask[0] & 0x0f
	pnLen := int(pkt[0]&3) + 1
	var pn uint64
	for i := range pnLen {
		pkt[p+i] ^= mask[1+i]
		pn = pn<<8 | uint64(pkt[p+i])
	}
	nonce := k.iv
	for i := range 8 {
		nonce[len(nonce)-1-i] ^= byte(pn >> (8 * i))
	}
	payload, err := k.aead.Open(pkt[p+pnLen:p+pnLen], nonce[:], pkt[p+pnLen:], pkt[:p+pnLen])
	if err != nil {
		return nil, ErrDecrypt
	}
	return payload, nil
}

// A Collector reassembles the ClientHello of one client from the CRYPTO
// frames of its Initial packets, in whatever order and split they come
// (Chromium scatters them, RFC 9000 section 19.6 allows it). The zero value
// is ready to use; the first Initial's destination connection ID fixes the
// keys.
type Collector struct {
	keys  *keys
	dcid  []byte
	buf   []byte // CRYPTO stream bytes, as far as any frame reached
	have  []bool // which bytes of buf arrived
	first int    // bytes at the start of buf that all arrived

	// Datagrams lists the sizes of the datagrams that carried Initials.
	Datagrams []int
	// Packets counts the Initial packets decrypted.
	Packets int
}

// Add reads the Initial packets of one datagram from the client. It
// returns an error for a datagram that holds no decryptable Initial of
// QUIC version 1, or a malformed one; coalesced packets of other types
// after the Initials are skipped.
func (c *Collector) Add(d []byte) error {
	size, n := len(d), 0
	for len(d) > 0 && IsLong(d) {
		h, err := ParseLong(d)
		if err != nil {
			return err
		}
		if h.Version != Version1 {
			return ErrVersion
		}
		if h.Type != TypeInitial {
			break
		}
		if c.keys == nil {
			if len(h.DCID) < 8 {
				// RFC 9000 section 7.2: at least 8 bytes in a client's
				// first Initial.
				return fmt.Errorf("%w: %d-byte destination connection ID", ErrNotInit, len(h.DCID))
			}
			c.dcid = append([]byte(nil), h.DCID...)
			c.keys = newKeys(c.dcid)
		}
		pkt := append([]byte(nil), d[:h.Len]...)
		payload, err := c.keys.open(pkt, h)
		if err != nil {
			return err
		}
		if err := c.frames(payload); err != nil {
			return err
		}
		c.Packets++
		n++
		d = d[h.Len:]
	}
	if n == 0 {
		return ErrNotInit
	}
	c.Datagrams = append(c.Datagrams, size)
	return nil
}

// frames reads the frames of a decrypted Initial packet: only those RFC
// 9000 section 12.4 allows there.
func (c *Collector) frames(b []byte) error {
	for len(b) > 0 {
		typ := b[0]
		b = b[1:]
		switch typ {
		case 0x00, 0x01: // PADDING, PING
		case 0x02, 0x03: // ACK (RFC 9000 section 19.3)
			var err error
			if b, err = skipACK(b, typ == 0x03); err != nil {
				return err
			}
		case 0x06: // CRYPTO
			off, n, err := varint(b)
			if err != nil {
				return ErrFrame
			}
			b = b[n:]
			l, n, err := varint(b)
			if err != nil {
				return ErrFrame
			}
			b = b[n:]
			if uint64(len(b)) < l || off > MaxCrypto || l > MaxCrypto-off {
				return ErrFrame
			}
			c.crypto(int(off), b[:l])
			b = b[l:]
		case 0x1c: // CONNECTION_CLOSE: the client gives up
			return fmt.Errorf("%w: CONNECTION_CLOSE", ErrFrame)
		default:
			return fmt.Errorf("%w: type %#x in an Initial", ErrFrame, typ)
		}
	}
	return nil
}

func (c *Collector) crypto(off int, data []byte) {
	if end := off + len(data); end > len(c.buf) {
		c.buf = append(c.buf, make([]byte, end-len(c.buf))...)
		c.have = append(c.have, make([]bool, end-len(c.have))...)
	}
	copy(c.buf[off:], data)
	for i := off; i < off+len(data); i++ {
		c.have[i] = true
	}
	for c.first < len(c.have) && c.have[c.first] {
		c.first++
	}
}

func skipACK(b []byte, ecn bool) ([]byte, error) {
	n := 4 // largest, delay, range count, first range
	for i := 0; i < n; i++ {
		v, l, err := varint(b)
		if err != nil {
			return nil, ErrFrame
		}
		b = b[l:]
		if i == 2 {
			if v > uint64(len(b)) {
				return nil, ErrFrame
			}
			n += 2 * int(v)
		}
	}
	if ecn {
		for range 3 {
			_, l, err := varint(b)
			if err != nil {
				return nil, ErrFrame
			}
			b = b[l:]
		}
	}
	return b, nil
}

// DCID returns the destination connection ID of the client's first
// Initial, or nil before one was added.
func (c *Collector) DCID() []byte { return c.dcid }

// Prefix returns the first n bytes of the CRYPTO stream once they have all
// arrived.
func (c *Collector) Prefix(n int) ([]byte, bool) {
	if c.first < n {
		return nil, false
	}
	return c.buf[:n], true
}

// ClientHello returns the ClientHello handshake message (type, length and
// body) once all of it has arrived.
func (c *Collector) ClientHello() ([]byte, bool) {
	h, ok := c.Prefix(4)
	if !ok || h[0] != 1 {
		return nil, false
	}
	return c.Prefix(4 + (int(h[1])<<16 | int(h[2])<<8 | int(h[3])))
}

// RandomOffset is where the client random starts in a ClientHello
// handshake message: after its type, 24-bit length and legacy version.
const RandomOffset = 4 + 2

// Random returns the ClientHello's 32-byte client random once the start of
// the hello has arrived; it needs only the hello's first 38 bytes.
func (c *Collector) Random() ([32]byte, bool) {
	var r [32]byte
	p, ok := c.Prefix(RandomOffset + 32)
	if !ok || p[0] != 1 {
		return r, false
	}
	copy(r[:], p[RandomOffset:])
	return r, true
}

// varint decodes a QUIC variable-length integer (RFC 9000 section 16).
func varint(b []byte) (uint64, int, error) {
	if len(b) == 0 {
		return 0, 0, ErrShort
	}
	n := 1 << (b[0] >> 6)
	if len(b) < n {
		return 0, 0, ErrShort
	}
	v := uint64(b[0] & 0x3f)
	for _, x := range b[1:n] {
		v = v<<8 | uint64(x)
	}
	return v, n, nil
}

// SealInitial builds a client Initial packet of QUIC version 1 for the
// destination connection ID dcid, with packet number pn, carrying frames,
// padded with PADDING frames to size bytes (RFC 9000 section 14.1 wants
// 1200 in a client's first datagram), and protected as RFC 9001 section 5
// says. It is what a [Collector] reads, for probers and tests.
func SealInitial(dcid []byte, pn uint32, frames []byte, size int) []byte {
	k := newKeys(dcid)
	hdr := []byte{0xc3} // long header, fixed bit, Initial, 4-byte packet number
	hdr = binary.BigEndian.AppendUint32(hdr, Version1)
	hdr = append(hdr, byte(len(dcid)))
	hdr = append(hdr, dcid...)
	hdr = append(hdr, 0, 0) // empty source connection ID, no token
	payload := append([]byte(nil), frames...)
	if pad := size - (len(hdr) + 2 + 4 + 16) - len(payload); pad > 0 {
		payload = append(payload, make([]byte, pad)...)
	}
	length := 4 + len(payload) + 16
	hdr = append(hdr, 0x40|byte(length>>8), byte(length))
	pnOff := len(hdr)
	hdr = binary.BigEndian.AppendUint32(hdr, pn)
	nonce := k.iv
	for i := range 8 {
		nonce[len(nonce)-1-i] ^= byte(uint64(pn) >> (8 * i))
	}
	pkt := k.aead.Seal(hdr, nonce[:], payload, hdr)
	var mask [16]byte
	k.hp.Encrypt(mask[:], pkt[pnOff+4:pnOff+20])
	pkt[0] ^= mask[0] & 0x0f
	for i := range 4 {
		pkt[pnOff+i] ^= mask[1+i]
	}
	return pkt
}

// AppendCrypto appends a CRYPTO frame carrying data at offset off.
func AppendCrypto(b []byte, off int, data []byte) []byte {
	b = append(b, 0x06)
	b = appendVarint(b, uint64(off))
	b = appendVarint(b, uint64(len(data)))
	return append(b, data...)
}

func appendVarint(b []byte, v uint64) []byte {
	switch {
	case v < 1<<6:
		return append(b, byte(v))
	case v < 1<<14:
		return append(b, 0x40|byte(v>>8), byte(v))
	case v < 1<<30:
		return append(b, 0x80|byte(v>>24), byte(v>>16), byte(v>>8), byte(v))
	default:
		return binary.BigEndian.AppendUint64(b, v|0xc0<<56)
	}
}
