package mtproxy

import (
	"crypto/ecdh"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"
)

// TLS record and handshake constants (RFC 8446, Sections 4 and 5.1).
const (
	recordHeaderLen     = 5
	recordChangeCipher  = 0x14
	recordAlert         = 0x15
	recordHandshake     = 0x16
	recordApplication   = 0x17
	handshakeClientHelo = 0x01
	handshakeServerHelo = 0x02

	// randomOffset is where the 32-byte random starts in a hello record:
	// record header (5), handshake type (1) and length (3), version (2).
	randomOffset = 11
	randomLen    = 32

	// maxPayload is the largest record payload written (2^14, RFC 8446
	// Section 5.1). Records read may be up to 2^16-1 bytes: apps are
	// lenient there too.
	maxPayload = 1 << 14
)

// version12 is the legacy record and handshake version, 0x0303 (TLS 1.2).
var version12 = [2]byte{3, 3}

// Errors from the FakeTLS functions, wrapped with detail.
var (
	// ErrHello means the bytes are not a well-formed TLS ClientHello
	// record.
	ErrHello = errors.New("mtproxy: not a TLS ClientHello record")
	// ErrDigest means the hello's random is not the HMAC of the hello
	// under the key: another key, or not an MTProxy app at all.
	ErrDigest = errors.New("mtproxy: FakeTLS digest mismatch")
	// ErrStale means the hello's timestamp is outside the time window.
	ErrStale = errors.New("mtproxy: FakeTLS timestamp outside the window")
)

// A ClientHello is a TLS ClientHello record as parsed for FakeTLS. Slices
// point into Record.
type ClientHello struct {
	// Record is the whole record, header included, as received.
	Record []byte
	// Random is the client random, which carries the digest.
	Random [randomLen]byte
	// SessionID is legacy_session_id, echoed in the server hello.
	SessionID []byte
	// CipherSuites are the offered suites, GREASE included.
	CipherSuites []uint16
	// ServerName is the first host_name of the server_name extension, or
	// "".
	ServerName string
}

// ParseClientHello parses one TLS record holding a ClientHello. It checks
// the framing of the fields a FakeTLS server needs (RFC 8446, Section
// 4.1.2) and nothing more; extensions other than server_name are skipped.
// It never panics, whatever the input.
func ParseClientHello(record []byte) (*ClientHello, error) {
	r := reader(record)
	typ, _ := r.u8()
	if _, ok := r.bytes(2); !ok || typ != recordHandshake || record[1] != 3 {
		return nil, fmt.Errorf("%w: record header", ErrHello)
	}
	body, ok := r.vec16()
	if !ok || len(r) != 0 {
		return nil, fmt.Errorf("%w: record length", ErrHello)
	}
	r = reader(body)
	ht, _ := r.u8()
	hs, ok := r.vec24()
	if !ok || ht != handshakeClientHelo || len(r) != 0 {
		return nil, fmt.Errorf("%w: handshake header", ErrHello)
	}
	r = reader(hs)
	h := &ClientHello{Record: record}
	if _, ok := r.bytes(2); !ok {
		return nil, fmt.Errorf("%w: version", ErrHello)
	}
	random, ok := r.bytes(randomLen)
	if !ok {
		return nil, fmt.Errorf("%w: random", ErrHello)
	}
	copy(h.Random[:], random)
	if h.SessionID, ok = r.vec8(); !ok || len(h.SessionID) > 32 {
		return nil, fmt.Errorf("%w: session id", ErrHello)
	}
	suites, ok := r.vec16()
	if !ok || len(suites)%2 != 0 || len(suites) == 0 {
		return nil, fmt.Errorf("%w: cipher suites", ErrHello)
	}
	for i := 0; i < len(suites); i += 2 {
		h.CipherSuites = append(h.CipherSuites, binary.BigEndian.Uint16(suites[i:]))
	}
	if _, ok := r.vec8(); !ok {
		return nil, fmt.Errorf("%w: compression methods", ErrHello)
	}
	if len(r) == 0 {
		return h, nil // no extensions
	}
	exts, ok := r.vec16()
	if !ok || len(r) != 0 {
		return nil, fmt.Errorf("%w: extensions", ErrHello)
	}
	r = reader(exts)
	for len(r) > 0 {
		typ, ok1 := r.u16()
		data, ok2 := r.vec16()
		if !ok1 || !ok2 {
			return nil, fmt.Errorf("%w: extension", ErrHello)
		}
		if typ == 0 && h.ServerName == "" {
			h.ServerName = serverName(data)
		}
	}
	return h, nil
}

// serverName returns the first host_name of a server_name extension
// (RFC 6066, Section 3), or "".
func serverName(data []byte) string {
	r := reader(data)
	list, ok := r.vec16()
	if !ok {
		return ""
	}
	r = reader(list)
	for len(r) > 0 {
		typ, ok1 := r.u8()
		name, ok2 := r.vec16()
		if !ok1 || !ok2 {
			return ""
		}
		if typ == 0 {
			return string(name)
		}
	}
	return ""
}

// check reports whether the hello's random is its digest under key, and if
// so returns the timestamp it carries. Its cost is one HMAC-SHA256 over
// the record, less the key's two pad blocks, hashed ahead.
func (h *ClientHello) check(key *PreparedKey) (time.Time, bool) {
	d, ok := key.digest(h.Record)
	if !ok {
		return time.Time{}, false
	}
	for i := range d {
		d[i] ^= h.Random[i]
	}
	var zero [randomLen - 4]byte
	if subtle.ConstantTimeCompare(d[:randomLen-4], zero[:]) != 1 {
		return time.Time{}, false
	}
	return time.Unix(int64(binary.LittleEndian.Uint32(d[randomLen-4:])), 0), true
}

// Verify checks the digest under key ([ErrDigest]) and that the timestamp
// is within window of now ([ErrStale]). To check hellos against the same
// key again and again, prepare it once ([Key.Prepare],
// [ClientHello.VerifyPrepared]).
func (h *ClientHello) Verify(key Key, now time.Time, window time.Duration) error {
	return h.VerifyPrepared(key.Prepare(), now, window)
}

// VerifyPrepared is [ClientHello.Verify] with a prepared key: the same
// answer, for less work. It is safe to call concurrently with the same
// key.
func (h *ClientHello) VerifyPrepared(key *PreparedKey, now time.Time, window time.Duration) error {
	ts, ok := h.check(key)
	if !ok {
		return ErrDigest
	}
	if d := now.Sub(ts); d > window || d < -window {
		return fmt.Errorf("%w: off by %v", ErrStale, d.Round(time.Second))
	}
	return nil
}

// A PreparedKey is a [Key] ready to check hellos with: the SHA-256 states
// of HMAC's inner and outer hashes after the key's padded block (RFC
// 2104, section 2), computed once, where [hmac.New] would hash both blocks
// again, and allocate, for every hello and secret. A relay checks each
// MTProxy hello against every secret it has, so this is most of what a
// hello costs it. A PreparedKey never changes; it is safe for concurrent
// use.
type PreparedKey struct {
	// inner and outer are marshaled SHA-256 states
	// (encoding.BinaryMarshaler), which a check restores into a fresh
	// digest of its own.
	inner, outer []byte
}

// Prepare returns k prepared for [ClientHello.VerifyPrepared].
func (k Key) Prepare() *PreparedKey {
	var pad [sha256.BlockSize]byte
	state := func(x byte) []byte {
		for i := range pad {
			pad[i] = x
			if i < len(k) {
				pad[i] ^= k[i]
			}
		}
		h := sha256.New()
		h.Write(pad[:])
		// Go's SHA-256 digests marshal their state (crypto/sha256's
		// doc), and never fail to.
		b, _ := h.(encoding.BinaryMarshaler).MarshalBinary()
		return b
	}
	return &PreparedKey{inner: state(0x36), outer: state(0x5c)}
}

// digest is HMAC-SHA256(key, record with the random zeroed). ok is false
// only if a state did not restore, which Go's SHA-256 never refuses of its
// own marshaling (and a zero digest would match a hello of zero random).
func (p *PreparedKey) digest(record []byte) (d [32]byte, ok bool) {
	h := sha256.New()
	u, isU := h.(encoding.BinaryUnmarshaler)
	if !isU || u.UnmarshalBinary(p.inner) != nil {
		return d, false
	}
	h.Write(record[:randomOffset])
	var zero [randomLen]byte
	h.Write(zero[:])
	h.Write(record[randomOffset+randomLen:])
	h.Sum(d[:0])
	if u.UnmarshalBinary(p.outer) != nil {
		return d, false
	}
	h.Write(d[:])
	h.Sum(d[:0])
	return d, true
}

// serverHello builds the proxy's answer to h, which must have passed
// [ClientHello.Verify] with key: a TLS 1.3-shaped ServerHello (echoing the
// session id, choosing one of the client's TLS 1.3 suites, with an X25519
// key share), a ChangeCipherSpec record, and one ApplicationData record of
// noise bytes (if in range, else 1-4 KiB) standing in for the encrypted
// rest of the flight. Its server
// random is HMAC-SHA256(key, client random ‖ answer with that random
// zeroed), which the app checks.
func serverHello(key Key, h *ClientHello, noise int) ([]byte, error) {
	priv, err := ecdh.X25519().GenerateKey(nil)
	if err != nil {
		return nil, fmt.Errorf("server hello key share: %w", err)
	}
	share := priv.PublicKey().Bytes()
	if noise < 64 || noise > 16384+256 {
		noise = 1024 + rand.IntN(3072)
	}

	b := make([]byte, 0, 140+len(h.SessionID)+recordHeaderLen+noise+6)
	b = append(b, recordHandshake, version12[0], version12[1], 0, 0) // length below
	b = append(b, handshakeServerHelo, 0, 0, 0)                      // length below
	b = append(b, version12[0], version12[1])
	b = append(b, make([]byte, randomLen)...) // the digest, below
	b = append(b, byte(len(h.SessionID)))
	b = append(b, h.SessionID...)
	b = binary.BigEndian.AppendUint16(b, pickSuite(h.CipherSuites))
	b = append(b, 0) // no compression
	b = binary.BigEndian.AppendUint16(b, uint16(6+8+len(share)))
	b = append(b, 0x00, 0x2b, 0x00, 0x02, 0x03, 0x04) // supported_versions: TLS 1.3
	b = append(b, 0x00, 0x33)                         // key_share
	b = binary.BigEndian.AppendUint16(b, uint16(4+len(share)))
	b = append(b, 0x00, 0x1d) // x25519
	b = binary.BigEndian.AppendUint16(b, uint16(len(share)))
	b = append(b, share...)
	binary.BigEndian.PutUint16(b[3:5], uint16(len(b)-recordHeaderLen))
	hsLen := len(b) - recordHeaderLen - 4
	b[6], b[7], b[8] = byte(hsLen>>16), byte(hsLen>>8), byte(hsLen)

	b = append(b, recordChangeCipher, version12[0], version12[1], 0, 1, 1)
	b = append(b, recordApplication, version12[0], version12[1])
	b = binary.BigEndian.AppendUint16(b, uint16(noise))
	n := len(b)
	b = b[:n+noise]
	fillRandom(b[n:])

	m := hmac.New(sha256.New, key[:])
	m.Write(h.Random[:])
	m.Write(b)
	copy(b[randomOffset:], m.Sum(nil))
	return b, nil
}

// fillRandom fills b with ChaCha8 output: the noise only has to look
// random, and must be cheap.
func fillRandom(b []byte) {
	var seed [32]byte
	for i := 0; i < len(seed); i += 8 {
		binary.LittleEndian.PutUint64(seed[i:], rand.Uint64())
	}
	rand.NewChaCha8(seed).Read(b)
}

// pickSuite returns the first TLS 1.3 suite the client offers, as a server
// preferring the client's order would; TLS_AES_128_GCM_SHA256 if none.
func pickSuite(suites []uint16) uint16 {
	for _, s := range suites {
		if s >= 0x1301 && s <= 0x1303 {
			return s
		}
	}
	return 0x1301
}

// reader reads big-endian TLS fields; each method reports false, consuming
// nothing useful, when the input is too short.
type reader []byte

func (r *reader) bytes(n int) ([]byte, bool) {
	if n < 0 || len(*r) < n {
		*r = nil
		return nil, false
	}
	b := (*r)[:n:n]
	*r = (*r)[n:]
	return b, true
}

func (r *reader) u8() (byte, bool) {
	b, ok := r.bytes(1)
	if !ok {
		return 0, false
	}
	return b[0], true
}

func (r *reader) u16() (uint16, bool) {
	b, ok := r.bytes(2)
	if !ok {
		return 0, false
	}
	return binary.BigEndian.Uint16(b), true
}

func (r *reader) vec8() ([]byte, bool) {
	n, ok := r.u8()
	if !ok {
		return nil, false
	}
	return r.bytes(int(n))
}

func (r *reader) vec16() ([]byte, bool) {
	n, ok := r.u16()
	if !ok {
		return nil, false
	}
	return r.bytes(int(n))
}

func (r *reader) vec24() ([]byte, bool) {
	b, ok := r.bytes(3)
	if !ok {
		return nil, false
	}
	return r.bytes(int(b[0])<<16 | int(b[1])<<8 | int(b[2]))
}
