// Package hello parses a TLS ClientHello as it arrives on the wire.
//
// The relay uses it on untrusted bytes: [ReadRecord] reads exactly one TLS
// record from a fresh connection, keeping every byte it consumed so that a
// connection which fails authentication can be forwarded byte for byte to
// the cover site, and [Parse] decodes that record. The carriers' tests use
// it to compare the hello built by uTLS with the one Chromium sends; the
// JA4 fingerprint they compare is computed by the sibling package
// transport/hello/ja4, which only tests import.
//
// The parser checks the framing of every length-prefixed field (RFC 8446,
// Section 4.1.2 and 4.2) and decodes only the extensions it knows; it does
// not check that values are sensible (a server name is not validated as a
// host name, unknown cipher suites are kept). It never reassembles a hello
// that spans several records: Chromium's hello, even with an ML-KEM key
// share, fits in one record, and a hello that does not is reported as
// [ErrFragmented].
package hello

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Record and handshake constants (RFC 8446, Section 5.1 and 4).
const (
	// RecordHeaderLen is the length of a TLS record header: content type,
	// legacy record version and a 16-bit length.
	RecordHeaderLen = 5
	// MaxRecordPayload is the largest plaintext record payload a peer may
	// send (2^14 bytes, RFC 8446 Section 5.1).
	MaxRecordPayload = 16384
	// MaxRecordLen is the largest record [ReadRecord] accepts, header
	// included.
	MaxRecordLen = RecordHeaderLen + MaxRecordPayload

	recordTypeHandshake     = 22
	handshakeTypeClientHelo = 1
	handshakeHeaderLen      = 4
	randomLen               = 32
	maxSessionIDLen         = 32
)

// Extension code points the parser decodes (IANA "TLS ExtensionType Values").
const (
	ExtServerName          uint16 = 0
	ExtSupportedGroups     uint16 = 10
	ExtSignatureAlgorithms uint16 = 13
	ExtALPN                uint16 = 16
	ExtSupportedVersions   uint16 = 43
	ExtKeyShare            uint16 = 51

	groupX25519 = 29
)

// Errors returned by [Parse] and [ReadRecord], wrapped with detail; test
// for them with [errors.Is].
var (
	// ErrNotHandshake means the record is not a TLS handshake record: its
	// content type is not 22 or its version's major byte is not 3. A
	// relay sees this for plain HTTP, SSH and other non-TLS probes.
	ErrNotHandshake = errors.New("hello: not a TLS handshake record")
	// ErrNotClientHello means the handshake message is not a ClientHello.
	ErrNotClientHello = errors.New("hello: handshake message is not a ClientHello")
	// ErrTruncated means the input ended before a length field said it
	// would: the record is shorter than its header announces, or a field
	// inside the hello runs past the end of its enclosing field.
	ErrTruncated = errors.New("hello: truncated")
	// ErrRecordTooLarge means the record header announces a payload
	// larger than [MaxRecordPayload]. Nothing after the header was read.
	ErrRecordTooLarge = errors.New("hello: record too large")
	// ErrFragmented means the ClientHello continues in a following record.
	// The package does not reassemble handshake messages.
	ErrFragmented = errors.New("hello: ClientHello spans more than one record")
	// ErrMalformed means the hello is framed correctly but breaks a rule
	// of RFC 8446: bytes after the last field, an odd-length list of
	// 16-bit values, an empty list that must not be empty, a session id
	// longer than 32 bytes, or a repeated extension.
	ErrMalformed = errors.New("hello: malformed ClientHello")
)

// A ClientHello is a parsed TLS ClientHello. Every byte slice in it points
// into Raw; nothing is shared with the record passed to [Parse].
//
// Lists keep wire order and GREASE values (RFC 8701); [IsGREASE] tells them
// apart. A nil list means the extension carrying it was absent.
type ClientHello struct {
	// Raw is the handshake message, starting at the handshake type byte
	// (1), as crypto/tls and uTLS store it in their hello's Raw field.
	Raw []byte
	// Version is legacy_version (0x0303 for TLS 1.2 and 1.3 clients).
	Version uint16
	// Random is the 32-byte client random.
	Random []byte
	// SessionID is legacy_session_id, 0 to 32 bytes.
	SessionID []byte
	// SessionIDOffset is the offset of SessionID within Raw: 39 (4 bytes
	// of handshake header, 2 of version, 32 of random, 1 of length).
	SessionIDOffset int
	// CipherSuites are the offered cipher suites.
	CipherSuites []uint16
	// CompressionMethods are legacy_compression_methods ({0} for every
	// modern client).
	CompressionMethods []byte
	// Extensions are the extension types, in wire order.
	Extensions []uint16
	// ServerName is the first host_name of the server_name extension, or
	// "" when there is none. It is not validated.
	ServerName string
	// ALPN lists the protocols of the ALPN extension.
	ALPN []string
	// SupportedVersions lists the versions of the supported_versions
	// extension.
	SupportedVersions []uint16
	// SignatureAlgorithms lists the schemes of the signature_algorithms
	// extension.
	SignatureAlgorithms []uint16
	// SupportedGroups lists the groups of the supported_groups extension.
	SupportedGroups []uint16
	// KeyShareGroups lists the group of each key_share entry.
	KeyShareGroups []uint16
	// X25519Share is the key exchange of the X25519 key_share entry (32
	// bytes), nil without one.
	X25519Share []byte

	// extData[i] is the body of extension Extensions[i].
	extData [][]byte
}

// ExtensionData returns the body of the extension of type typ (a subslice
// of h.Raw, without the 4-byte type and length), and whether the hello
// carries that extension.
func (h *ClientHello) ExtensionData(typ uint16) ([]byte, bool) {
	for i, t := range h.Extensions {
		if t == typ {
			return h.extData[i], true
		}
	}
	return nil, false
}

// HasExtension reports whether the hello carries an extension of type typ.
func (h *ClientHello) HasExtension(typ uint16) bool {
	_, ok := h.ExtensionData(typ)
	return ok
}

// IsGREASE reports whether v is one of the sixteen GREASE values of RFC
// 8701 (0x0a0a, 0x1a1a, ..., 0xfafa) used for cipher suites, extensions,
// groups, versions and signature algorithms.
func IsGREASE(v uint16) bool {
	return v&0x0f0f == 0x0a0a && v>>8 == v&0xff
}

// Parse parses one TLS record that holds a whole ClientHello: the 5-byte
// record header followed by exactly the record's payload. record is not
// retained; the result owns a copy.
func Parse(record []byte) (*ClientHello, error) {
	if len(record) < RecordHeaderLen {
		return nil, fmt.Errorf("record header: %d of %d bytes: %w", len(record), RecordHeaderLen, ErrTruncated)
	}
	if err := checkHeader(record[:RecordHeaderLen]); err != nil {
		return nil, err
	}
	n := int(binary.BigEndian.Uint16(record[3:5]))
	payload := record[RecordHeaderLen:]
	switch {
	case len(payload) < n:
		return nil, fmt.Errorf("record payload: %d of %d bytes: %w", len(payload), n, ErrTruncated)
	case len(payload) > n:
		return nil, fmt.Errorf("%d bytes after the record: %w", len(payload)-n, ErrMalformed)
	}
	if len(payload) < handshakeHeaderLen {
		return nil, fmt.Errorf("handshake header: %d of %d bytes: %w", len(payload), handshakeHeaderLen, ErrFragmented)
	}
	if payload[0] != handshakeTypeClientHelo {
		return nil, fmt.Errorf("handshake type %d: %w", payload[0], ErrNotClientHello)
	}
	m := int(payload[1])<<16 | int(payload[2])<<8 | int(payload[3])
	switch body := len(payload) - handshakeHeaderLen; {
	case body < m:
		return nil, fmt.Errorf("ClientHello of %d bytes in a record of %d: %w", m, n, ErrFragmented)
	case body > m:
		return nil, fmt.Errorf("%d bytes after the ClientHello in its record: %w", body-m, ErrMalformed)
	}
	return parseMessage(append([]byte(nil), payload...))
}

// checkHeader checks the content type and version of a record header.
func checkHeader(h []byte) error {
	if h[0] != recordTypeHandshake {
		return fmt.Errorf("record type %d: %w", h[0], ErrNotHandshake)
	}
	if h[1] != 3 {
		return fmt.Errorf("record version %#04x: %w", binary.BigEndian.Uint16(h[1:3]), ErrNotHandshake)
	}
	return nil
}

// parseMessage parses a complete ClientHello handshake message, header
// included, and keeps raw as the result's Raw.
func parseMessage(raw []byte) (*ClientHello, error) {
	h := &ClientHello{Raw: raw}
	s := cursor(raw[handshakeHeaderLen:])
	var ok bool
	if h.Version, ok = s.uint16(); !ok {
		return nil, fmt.Errorf("legacy_version: %w", ErrTruncated)
	}
	if h.Random, ok = s.bytes(randomLen); !ok {
		return nil, fmt.Errorf("random: %w", ErrTruncated)
	}
	h.SessionIDOffset = len(raw) - len(s) + 1
	if h.SessionID, ok = s.vec8(); !ok {
		return nil, fmt.Errorf("legacy_session_id: %w", ErrTruncated)
	}
	if len(h.SessionID) > maxSessionIDLen {
		return nil, fmt.Errorf("legacy_session_id of %d bytes: %w", len(h.SessionID), ErrMalformed)
	}
	suites, ok := s.vec16()
	if !ok {
		return nil, fmt.Errorf("cipher_suites: %w", ErrTruncated)
	}
	if h.CipherSuites, ok = uint16s(suites, false); !ok {
		return nil, fmt.Errorf("cipher_suites of %d bytes: %w", len(suites), ErrMalformed)
	}
	if h.CompressionMethods, ok = s.vec8(); !ok {
		return nil, fmt.Errorf("legacy_compression_methods: %w", ErrTruncated)
	}
	if len(h.CompressionMethods) == 0 {
		return nil, fmt.Errorf("empty legacy_compression_methods: %w", ErrMalformed)
	}
	if len(s) == 0 {
		// A hello without extensions (RFC 5246, Section 7.4.1.2).
		return h, nil
	}
	exts, ok := s.vec16()
	if !ok {
		return nil, fmt.Errorf("extensions: %w", ErrTruncated)
	}
	if len(s) != 0 {
		return nil, fmt.Errorf("%d bytes after the extensions: %w", len(s), ErrMalformed)
	}
	if err := h.parseExtensions(exts); err != nil {
		return nil, err
	}
	return h, nil
}

// countExtensions counts the extensions in exts by their lengths alone,
// so that their slices are made to size: a bound from the block's length
// (4 bytes each at least) would be some 25 times too large for a
// Chromium hello. Truncation is parseExtensions' to report.
func countExtensions(exts cursor) int {
	n := 0
	for len(exts) >= 4 {
		l := 4 + (int(exts[2])<<8 | int(exts[3]))
		n++
		if l > len(exts) {
			break
		}
		exts = exts[l:]
	}
	return n
}

// parseExtensions fills h from the extensions block (RFC 8446, Section 4.2).
func (h *ClientHello) parseExtensions(exts cursor) error {
	n := countExtensions(exts)
	h.Extensions = make([]uint16, 0, n)
	h.extData = make([][]byte, 0, n)
	var seen [1 << 16 / 64]uint64 // a bit per extension type
	for len(exts) > 0 {
		typ, ok := exts.uint16()
		if !ok {
			return fmt.Errorf("extension type: %w", ErrTruncated)
		}
		body, ok := exts.vec16()
		if !ok {
			return fmt.Errorf("extension %d: %w", typ, ErrTruncated)
		}
		if seen[typ/64]&(1<<(typ%64)) != 0 {
			return fmt.Errorf("extension %d repeated: %w", typ, ErrMalformed)
		}
		seen[typ/64] |= 1 << (typ % 64)
		h.Extensions = append(h.Extensions, typ)
		h.extData = append(h.extData, body)
		if err := h.parseExtension(typ, body); err != nil {
			return fmt.Errorf("extension %d: %w", typ, err)
		}
	}
	return nil
}

// parseExtension decodes the body of one extension the package knows.
func (h *ClientHello) parseExtension(typ uint16, body cursor) error {
	var list cursor
	var ok bool
	switch typ {
	case ExtSupportedVersions:
		list, ok = body.vec8()
	case ExtServerName, ExtSupportedGroups, ExtSignatureAlgorithms, ExtALPN, ExtKeyShare:
		list, ok = body.vec16()
	default:
		return nil
	}
	if !ok {
		return ErrTruncated
	}
	if len(body) != 0 {
		return fmt.Errorf("%d bytes after the list: %w", len(body), ErrMalformed)
	}
	switch typ {
	case ExtSupportedVersions:
		h.SupportedVersions, ok = uint16s(list, true)
	case ExtSupportedGroups:
		h.SupportedGroups, ok = uint16s(list, true)
	case ExtSignatureAlgorithms:
		h.SignatureAlgorithms, ok = uint16s(list, true)
	case ExtServerName:
		return h.parseServerName(list)
	case ExtALPN:
		return h.parseALPN(list)
	case ExtKeyShare:
		return h.parseKeyShare(list)
	}
	if !ok {
		return fmt.Errorf("list of %d bytes: %w", len(list), ErrMalformed)
	}
	return nil
}

// parseServerName reads a ServerNameList (RFC 6066, Section 3) and keeps
// its first host_name.
func (h *ClientHello) parseServerName(list cursor) error {
	if len(list) == 0 {
		return fmt.Errorf("empty server_name_list: %w", ErrMalformed)
	}
	found := false
	for len(list) > 0 {
		nameType, ok := list.uint8()
		if !ok {
			return ErrTruncated
		}
		name, ok := list.vec16()
		if !ok {
			return ErrTruncated
		}
		if nameType == 0 && !found {
			if len(name) == 0 {
				return fmt.Errorf("empty host_name: %w", ErrMalformed)
			}
			h.ServerName = string(name)
			found = true
		}
	}
	return nil
}

// parseALPN reads a ProtocolNameList (RFC 7301, Section 3.1).
func (h *ClientHello) parseALPN(list cursor) error {
	if len(list) == 0 {
		return fmt.Errorf("empty protocol_name_list: %w", ErrMalformed)
	}
	// Each name takes at least 2 bytes.
	h.ALPN = make([]string, 0, len(list)/2)
	for len(list) > 0 {
		name, ok := list.vec8()
		if !ok {
			return ErrTruncated
		}
		if len(name) == 0 {
			return fmt.Errorf("empty protocol name: %w", ErrMalformed)
		}
		h.ALPN = append(h.ALPN, string(name))
	}
	return nil
}

// parseKeyShare reads client_shares (RFC 8446, Section 4.2.8) and keeps
// the group of each entry.
func (h *ClientHello) parseKeyShare(list cursor) error {
	// Each entry takes at least 4 bytes.
	h.KeyShareGroups = make([]uint16, 0, len(list)/4)
	for len(list) > 0 {
		group, ok := list.uint16()
		if !ok {
			return ErrTruncated
		}
		kx, ok := list.vec16()
		if !ok {
			return ErrTruncated
		}
		if group == groupX25519 && len(kx) == 32 && h.X25519Share == nil {
			h.X25519Share = kx
		}
		h.KeyShareGroups = append(h.KeyShareGroups, group)
	}
	return nil
}

// uint16s decodes a list of big-endian 16-bit values. It fails on an odd
// length, and on an empty list unless allowEmpty.
func uint16s(b []byte, allowEmpty bool) ([]uint16, bool) {
	if len(b)%2 != 0 || (len(b) == 0 && !allowEmpty) {
		return nil, false
	}
	v := make([]uint16, len(b)/2)
	for i := range v {
		v[i] = binary.BigEndian.Uint16(b[2*i:])
	}
	return v, true
}

// A cursor reads big-endian fields from the front of a byte slice. Each
// method reports false, consuming nothing, when too few bytes remain.
type cursor []byte

func (c *cursor) bytes(n int) ([]byte, bool) {
	if n < 0 || len(*c) < n {
		return nil, false
	}
	b := (*c)[:n:n]
	*c = (*c)[n:]
	return b, true
}

func (c *cursor) uint8() (uint8, bool) {
	b, ok := c.bytes(1)
	if !ok {
		return 0, false
	}
	return b[0], true
}

func (c *cursor) uint16() (uint16, bool) {
	b, ok := c.bytes(2)
	if !ok {
		return 0, false
	}
	return binary.BigEndian.Uint16(b), true
}

// vec8 reads a vector with an 8-bit length prefix.
func (c *cursor) vec8() (cursor, bool) {
	save := *c
	n, ok := c.uint8()
	if !ok {
		return nil, false
	}
	b, ok := c.bytes(int(n))
	if !ok {
		*c = save
		return nil, false
	}
	return b, true
}

// vec16 reads a vector with a 16-bit length prefix.
func (c *cursor) vec16() (cursor, bool) {
	save := *c
	n, ok := c.uint16()
	if !ok {
		return nil, false
	}
	b, ok := c.bytes(int(n))
	if !ok {
		*c = save
		return nil, false
	}
	return b, true
}
