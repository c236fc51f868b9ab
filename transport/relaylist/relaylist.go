// Package relaylist is the signed relay list that bootstraps clients when
// every relay they know is blocked: a set of entries (the fields of a share
// link), a sequence number and an expiry, signed with an ed25519 list key
// that is kept apart from every relay's keys.
//
// The encoding is compact and canonical (one byte string per list), all
// integers big-endian:
//
//	magic    "MRL2"             4 bytes
//	seq      uint64             8
//	expires  int64 Unix seconds 8
//	count    uint16             2, at most MaxEntries
//	entries  count times:
//	  relays   uint8 n, then n × (uint8 len, host:port)
//	  carriers uint8 n, then n × (uint8 len, name)
//	  pin      32 bytes
//	  key      32 bytes
//	  sni      uint8 len, name
//	  name     uint8 len, label
//	  ak       uint8 len (0 or 32), the relay's key for sealed tokens
//	sig      64 bytes, ed25519 over every byte before it
//
// [Decode] parses strictly (no trailing bytes, every entry a valid link),
// then checks the signature, the expiry and the sequence number, in that
// order, and wraps one of the package's sentinel errors. A client keeps the
// highest sequence number it has accepted and passes it as
// [Verify.MinSeq], so that an attacker who replays an old, still-signed
// list cannot roll the client back to relays that were since retired.
//
// # DNS publication
//
// In DNS a list is published sealed for an audience (see package
// relay/dnsserver for the server and client/bootstrap for the fetcher).
// An audience is the set of people who hold one bootstrap key: a 32-byte
// secret that only share links carry (link.Link.BootstrapKeys, bk=). The
// operator publishes one list (or one per requester bucket) per audience,
// so a leaked link exposes only its audience's relays. From the secret S
// both sides derive, with HKDF-SHA256 (RFC 5869, salt
// "merpati bootstrap v1"):
//
//	nameKey      = HKDF(S, info "name")              names and shapes
//	sealKey(p)   = HKDF(S, info "seal" || u64(p))    the list's AEAD key in period p
//
// p is the period: whole days since the Unix epoch, UTC ([PeriodOf]).
// Clients also try the previous and next period (clock skew), and servers
// answer all three.
//
// Names: chunk i of period p is a TXT record at LABEL.ZONE. Its shape is
// drawn from the keyed stream of 32-byte blocks HMAC-SHA256(nameKey,
// "name" || u64(p) || u32(i) || u32(k)), k = 0, 1, ...: the first byte
// picks the chunk's size (one of [ChunkSizes], byte mod 4), the following
// ones the label, by a small generative model of English words (label.go):
// a length of 5 to 16 letters, then an initial consonant cluster, vowel
// groups and medial clusters in turn and a final cluster, each picked
// with the frequency it has in English words (two bytes per pick, big
// endian, modulo the table's total weight). One label in sixteen ends in
// a digit or two and one in sixteen joins two words with a hyphen, as
// host names do. So a label reads like a word or a host name: its length,
// letters and clusters follow English, a pattern fitted to the model
// matches about half of real English words too, and nDPI's DGA heuristic
// flags none. It changes every day, differs between audiences, and cannot
// be guessed or enumerated without S. Two labels collide with a
// probability of about 10^-8 per pair; the server then answers both
// chunks under the name and the client keeps the combination that opens.
// There is no index record and no fixed label.
//
// Sealing: the signed list L (its ed25519 signature inside, see [Sign])
// travels as one stream cut into n chunks, n a power of two or three
// times one (1, 2, 3, 4, 6, 8, 12 ... [MaxChunks]) so that the number of
// queries tells little about the list's length. Chunk i carries
// [Audience.ChunkSize](p, i) bytes. The stream is
//
//	mask(n)  2 bytes, n XOR HMAC(nameKey, "count" || u64(p))[:2]
//	nonce    24 bytes, HMAC(sealKey(p), "nonce" || L)[:24]
//	box      XChaCha20-Poly1305(sealKey(p), nonce,
//	           plaintext u32(len(L)) || L || zero padding,
//	           additional data "merpati bootstrap v1" || u64(p) || u16(n))
//
// with the padding filling the n chunks exactly. Everything on the wire
// is thus either derived from S or ciphertext: without S the chunks are
// uniformly random bytes, and each chunk is standard base64 (no '='
// padding: every size is a multiple of 3) in TXT strings of 255
// characters and one shorter one, 272, 328, 368 or 408 characters in all,
// so that an answer fits 512 bytes (see [ChunkSizes]).
// The nonce is derived from the list (as in SIV), so that the same list
// in the same period always seals to the same chunks (resolvers and
// several servers agree) while a different list never reuses a nonce.
//
// A client asks for chunk 0, unmasks n from its first two bytes, asks for
// chunks 1 to n-1, and opens the whole; any bit changed anywhere, chunks
// of two lists mixed, or a wrong period fails the AEAD check.
package relaylist

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/merpati/merpati/transport/link"
)

// Magic starts every encoded list.
const Magic = "MRL2"

// Limits of the encoding.
const (
	// MaxEntries is the most entries a list may have.
	MaxEntries = 1024
	// MaxSize is the longest encoded list accepted, in bytes.
	MaxSize = 256 << 10
	// headerSize is magic, seq, expires and count.
	headerSize = 4 + 8 + 8 + 2
)

// Errors returned by [Decode], wrapped with details.
var (
	// ErrMalformed means the bytes are not a well-formed list: truncated,
	// too long, trailing bytes, or an entry that is not a valid link.
	ErrMalformed = errors.New("relaylist: malformed list")
	// ErrSignature means the signature does not verify with the list key:
	// the list is forged or was altered.
	ErrSignature = errors.New("relaylist: bad signature")
	// ErrExpired means the list's expiry has passed.
	ErrExpired = errors.New("relaylist: list expired")
	// ErrRollback means the list's sequence number is lower than one the
	// client has already accepted.
	ErrRollback = errors.New("relaylist: sequence number rolled back")
)

// An Entry is one relay (or one set of addresses of the same relay) with
// what a client needs to use it: the fields of a share link except the
// bootstrap domains and the list key, which the list inherits from the
// link that led to it.
type Entry struct {
	// Relays are the relay's addresses, "host:port", as in [link.Link].
	Relays []string
	// Carriers in order of preference; empty means all.
	Carriers []string
	// Pin is the SHA-256 of the relay certificate's SubjectPublicKeyInfo.
	Pin [link.PinSize]byte
	// SNI is the cover server name.
	SNI string
	// Key is the access key issued for the list's audience.
	Key [link.KeySize]byte
	// Name is an optional label.
	Name string
	// AuthKey is the relay's X25519 key for sealed tokens, as in
	// [link.Link]: nil or [link.AuthKeySize] bytes.
	AuthKey []byte
}

// FromLink returns the entry for l's relays. l's Bootstrap and ListKey are
// dropped.
func FromLink(l *link.Link) Entry {
	return Entry{
		Relays:   append([]string(nil), l.Relays...),
		Carriers: append([]string(nil), l.Carriers...),
		Pin:      l.Pin,
		SNI:      l.SNI,
		Key:      l.Key,
		Name:     l.Name,
		AuthKey:  append([]byte(nil), l.AuthKey...),
	}
}

// Link returns e as a share link without bootstrap domains or list key.
func (e Entry) Link() *link.Link {
	return &link.Link{
		Relays:   append([]string(nil), e.Relays...),
		Carriers: append([]string(nil), e.Carriers...),
		Pin:      e.Pin,
		SNI:      e.SNI,
		Key:      e.Key,
		Name:     e.Name,
		AuthKey:  append([]byte(nil), e.AuthKey...),
	}
}

// A List is a decoded relay list.
type List struct {
	// Seq is the sequence number; each new list from the same key must
	// have a higher one.
	Seq uint64
	// Expires is when clients stop trusting the list (second precision).
	Expires time.Time
	// Entries are the relays.
	Entries []Entry
}

// Sign encodes l and signs it with key. It fails if l is not encodable:
// no entries, too many, a field too long, or an entry that is not a valid
// link.
func Sign(l *List, key ed25519.PrivateKey) ([]byte, error) {
	if len(key) != ed25519.PrivateKeySize {
		return nil, errors.New("relaylist: sign: bad private key size")
	}
	body, err := l.marshal()
	if err != nil {
		return nil, err
	}
	return append(body, ed25519.Sign(key, body)...), nil
}

func (l *List) marshal() ([]byte, error) {
	if len(l.Entries) == 0 || len(l.Entries) > MaxEntries {
		return nil, fmt.Errorf("relaylist: %d entries, want 1 to %d", len(l.Entries), MaxEntries)
	}
	b := make([]byte, 0, headerSize+len(l.Entries)*128+ed25519.SignatureSize)
	b = append(b, Magic...)
	b = binary.BigEndian.AppendUint64(b, l.Seq)
	b = binary.BigEndian.AppendUint64(b, uint64(l.Expires.Unix()))
	b = binary.BigEndian.AppendUint16(b, uint16(len(l.Entries)))
	for i, e := range l.Entries {
		if err := e.Link().Validate(); err != nil {
			return nil, fmt.Errorf("relaylist: entry %d: %w", i, err)
		}
		var err error
		if b, err = appendStrings(b, e.Relays); err != nil {
			return nil, fmt.Errorf("relaylist: entry %d relays: %w", i, err)
		}
		if b, err = appendStrings(b, e.Carriers); err != nil {
			return nil, fmt.Errorf("relaylist: entry %d carriers: %w", i, err)
		}
		b = append(b, e.Pin[:]...)
		b = append(b, e.Key[:]...)
		if b, err = appendString(b, e.SNI); err != nil {
			return nil, fmt.Errorf("relaylist: entry %d sni: %w", i, err)
		}
		if b, err = appendString(b, e.Name); err != nil {
			return nil, fmt.Errorf("relaylist: entry %d name: %w", i, err)
		}
		if b, err = appendString(b, string(e.AuthKey)); err != nil {
			return nil, fmt.Errorf("relaylist: entry %d auth key: %w", i, err)
		}
	}
	if len(b)+ed25519.SignatureSize > MaxSize {
		return nil, fmt.Errorf("relaylist: encoded list is %d bytes, limit %d", len(b)+ed25519.SignatureSize, MaxSize)
	}
	return b, nil
}

func appendString(b []byte, s string) ([]byte, error) {
	if len(s) > 255 {
		return nil, fmt.Errorf("%q longer than 255 bytes", s)
	}
	return append(append(b, byte(len(s))), s...), nil
}

func appendStrings(b []byte, ss []string) ([]byte, error) {
	if len(ss) > 255 {
		return nil, fmt.Errorf("%d items, limit 255", len(ss))
	}
	b = append(b, byte(len(ss)))
	for _, s := range ss {
		var err error
		if b, err = appendString(b, s); err != nil {
			return nil, err
		}
	}
	return b, nil
}

// Verify says how [Decode] checks a list.
type Verify struct {
	// Key is the list's ed25519 public key (the link's ListKey).
	// Required.
	Key ed25519.PublicKey
	// Now is the current time for the expiry check. The zero time skips
	// the check, for reading a cached list only to learn its sequence
	// number.
	Now time.Time
	// MinSeq is the highest sequence number accepted before; lists with a
	// lower one fail with [ErrRollback]. The same number is accepted (the
	// same list fetched again).
	MinSeq uint64
}

// Decode parses data, verifies its signature with v.Key, and checks its
// expiry and sequence number. Errors wrap [ErrMalformed], [ErrSignature],
// [ErrExpired] or [ErrRollback].
func Decode(data []byte, v Verify) (*List, error) {
	if len(v.Key) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("%w: list key is %d bytes, want %d", ErrSignature, len(v.Key), ed25519.PublicKeySize)
	}
	l, body, sig, err := parse(data)
	if err != nil {
		return nil, err
	}
	if !ed25519.Verify(v.Key, body, sig) {
		return nil, ErrSignature
	}
	if !v.Now.IsZero() && !v.Now.Before(l.Expires) {
		return nil, fmt.Errorf("%w: at %s (seq %d)", ErrExpired, l.Expires.UTC().Format(time.RFC3339), l.Seq)
	}
	if l.Seq < v.MinSeq {
		return nil, fmt.Errorf("%w: got %d, already accepted %d", ErrRollback, l.Seq, v.MinSeq)
	}
	return l, nil
}

// ParseUnverified parses data without checking its signature, expiry or
// sequence number. It is for publishers (the DNS server logs what it
// serves); clients must use [Decode].
func ParseUnverified(data []byte) (*List, error) {
	l, _, _, err := parse(data)
	return l, err
}

// Digest is the SHA-256 of an encoded list, signature included: a short
// public name of a list for logs.
func Digest(data []byte) [32]byte { return sha256.Sum256(data) }

// parse splits data into list, signed body and signature.
func parse(data []byte) (*List, []byte, []byte, error) {
	if len(data) > MaxSize {
		return nil, nil, nil, fmt.Errorf("%w: %d bytes, limit %d", ErrMalformed, len(data), MaxSize)
	}
	if len(data) < headerSize+ed25519.SignatureSize {
		return nil, nil, nil, fmt.Errorf("%w: truncated (%d bytes)", ErrMalformed, len(data))
	}
	if string(data[:4]) != Magic {
		return nil, nil, nil, fmt.Errorf("%w: bad magic", ErrMalformed)
	}
	body := data[:len(data)-ed25519.SignatureSize]
	sig := data[len(body):]
	r := reader{b: body[4:]}
	l := &List{Seq: r.u64(), Expires: time.Unix(int64(r.u64()), 0).UTC()}
	n := int(r.u16())
	if n == 0 || n > MaxEntries {
		return nil, nil, nil, fmt.Errorf("%w: %d entries, want 1 to %d", ErrMalformed, n, MaxEntries)
	}
	l.Entries = make([]Entry, 0, min(n, 64))
	for i := range n {
		var e Entry
		e.Relays = r.strings()
		e.Carriers = r.strings()
		copy(e.Pin[:], r.bytes(link.PinSize))
		copy(e.Key[:], r.bytes(link.KeySize))
		e.SNI = r.str()
		e.Name = r.str()
		if ak := r.bytes(r.u8()); len(ak) > 0 {
			e.AuthKey = append([]byte(nil), ak...)
		}
		if r.short {
			return nil, nil, nil, fmt.Errorf("%w: truncated in entry %d", ErrMalformed, i)
		}
		if err := e.Link().Validate(); err != nil {
			return nil, nil, nil, fmt.Errorf("%w: entry %d: %v", ErrMalformed, i, err)
		}
		l.Entries = append(l.Entries, e)
	}
	if len(r.b) != 0 {
		return nil, nil, nil, fmt.Errorf("%w: %d trailing bytes", ErrMalformed, len(r.b))
	}
	return l, body, sig, nil
}

// reader reads big-endian fields; after a short read every further read
// returns zero values and short stays set.
type reader struct {
	b     []byte
	short bool
}

func (r *reader) bytes(n int) []byte {
	if r.short || len(r.b) < n {
		r.short = true
		return nil
	}
	v := r.b[:n]
	r.b = r.b[n:]
	return v
}

func (r *reader) u64() uint64 {
	if b := r.bytes(8); b != nil {
		return binary.BigEndian.Uint64(b)
	}
	return 0
}

func (r *reader) u16() uint16 {
	if b := r.bytes(2); b != nil {
		return binary.BigEndian.Uint16(b)
	}
	return 0
}

func (r *reader) u8() int {
	if b := r.bytes(1); b != nil {
		return int(b[0])
	}
	return 0
}

func (r *reader) str() string { return string(r.bytes(r.u8())) }

func (r *reader) strings() []string {
	n := r.u8()
	if n == 0 {
		return nil
	}
	ss := make([]string, 0, n)
	for range n {
		ss = append(ss, r.str())
	}
	if r.short {
		return nil
	}
	return ss
}
