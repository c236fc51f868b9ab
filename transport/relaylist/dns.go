package relaylist

import (
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"golang.org/x/crypto/chacha20poly1305"

	"github.com/merpati/merpati/transport/link"
)

// Period is how long one set of names and one sealing key last.
const Period = 24 * time.Hour

// ChunkSizes are the sizes in bytes a chunk may have (before base64):
// 272, 328, 368 and 408 base64 characters. A chunk answer then stays
// within 512 bytes, the classic UDP limit (RFC 1035) that DPI engines
// flag answers beyond (nDPI: "DNS Packet Larger Than 512 bytes"), for
// zones of up to 44 characters; a longer zone's answers still fit the
// EDNS0 payload size of 1232 bytes, or come back truncated and are asked
// again over TCP.
var ChunkSizes = [4]int{204, 246, 276, 306}

// MaxChunks is the most chunks a published list may take.
const MaxChunks = 2048

const (
	hkdfSalt   = "merpati bootstrap v1"
	adPrefix   = "merpati bootstrap v1"
	maskLen    = 2
	nonceLen   = chacha20poly1305.NonceSizeX
	lenLen     = 4
	sealedOver = maskLen + nonceLen + chacha20poly1305.Overhead + lenLen
)

// ErrSealed means chunks do not open with the audience's key for the
// period: they were sealed for another audience or period, altered,
// mixed from two lists, or are not chunks at all.
var ErrSealed = errors.New("relaylist: sealed chunks do not open")

// An Audience holds the keys derived from one bootstrap key. It is safe
// for concurrent use.
type Audience struct {
	secret  [link.BootstrapKeySize]byte
	nameKey []byte
}

// NewAudience derives an audience's keys from its bootstrap key.
func NewAudience(secret [link.BootstrapKeySize]byte) *Audience {
	nk, err := hkdf.Key(sha256.New, secret[:], []byte(hkdfSalt), "name", 32)
	if err != nil {
		panic("relaylist: hkdf: " + err.Error()) // only for lengths out of range
	}
	return &Audience{secret: secret, nameKey: nk}
}

// ID is a short public name of the audience for logs and listings (not
// secret, not on the wire): 16 hex digits.
func (a *Audience) ID() string {
	return hex.EncodeToString(a.mac(a.nameKey, []byte("id"))[:8])
}

// PeriodOf returns the period t falls in: whole days since the Unix
// epoch, UTC.
func PeriodOf(t time.Time) int64 {
	return t.Unix() / int64(Period/time.Second)
}

// PeriodStart returns when period p starts.
func PeriodStart(p int64) time.Time {
	return time.Unix(p*int64(Period/time.Second), 0).UTC()
}

func (a *Audience) mac(key []byte, parts ...[]byte) []byte {
	m := hmac.New(sha256.New, key)
	for _, p := range parts {
		m.Write(p)
	}
	return m.Sum(nil)
}

func (a *Audience) sealKey(p int64) []byte {
	k, err := hkdf.Key(sha256.New, a.secret[:], []byte(hkdfSalt), "seal"+string(binary.BigEndian.AppendUint64(nil, uint64(p))), chacha20poly1305.KeySize)
	if err != nil {
		panic("relaylist: hkdf: " + err.Error())
	}
	return k
}

// ChunkSize returns the size in bytes of chunk i in period p (the length
// of what [DecodeTXT] returns for it): one of [ChunkSizes], picked by the
// first byte of the chunk's stream.
func (a *Audience) ChunkSize(p int64, i int) int {
	return ChunkSizes[newLabelRand(a.nameKey, p, i).byte()%4]
}

// Label returns the DNS label of chunk i in period p, drawn from the
// chunk's stream after the byte that picks its size.
func (a *Audience) Label(p int64, i int) string {
	r := newLabelRand(a.nameKey, p, i)
	r.byte()
	return r.label()
}

// Name returns the owner name of chunk i in period p under zone, as a
// lower-case FQDN.
func (a *Audience) Name(p int64, i int, zone string) string {
	zone = strings.ToLower(strings.TrimSuffix(strings.TrimPrefix(zone, "."), "."))
	return a.Label(p, i) + "." + zone + "."
}

func (a *Audience) mask(p int64) uint16 {
	return binary.BigEndian.Uint16(a.mac(a.nameKey, []byte("count"), binary.BigEndian.AppendUint64(nil, uint64(p))))
}

func (a *Audience) capacity(p int64, n int) int {
	total := 0
	for i := range n {
		total += a.ChunkSize(p, i)
	}
	return total
}

// validCount reports whether n is a chunk count a list may have: a power
// of two or three times one (1, 2, 3, 4, 6, 8, 12 ...), up to MaxChunks,
// so that the number of queries tells little about a list's length while
// padding never adds more than half.
func validCount(n int) bool {
	if n < 1 || n > MaxChunks {
		return false
	}
	if n%3 == 0 {
		n /= 3
	}
	return n&(n-1) == 0
}

// Chunks returns how many chunks a signed list of size bytes takes in
// period p, or an error if it needs more than [MaxChunks].
func (a *Audience) Chunks(p int64, size int) (int, error) {
	total := 0
	for n := 1; n <= MaxChunks; n++ {
		total += a.ChunkSize(p, n-1)
		if validCount(n) && total >= size+sealedOver {
			return n, nil
		}
	}
	return 0, fmt.Errorf("relaylist: a %d-byte list needs more than %d chunks", size, MaxChunks)
}

func ad(p int64, n int) []byte {
	b := append([]byte(adPrefix), binary.BigEndian.AppendUint64(nil, uint64(p))...)
	return binary.BigEndian.AppendUint16(b, uint16(n))
}

// Seal seals list (a signed list) for period p into n chunks, n a power
// of two no smaller than [Audience.Chunks] reports (a server with several
// bucket lists seals them all to the largest count). It returns the
// chunks' bytes; [EncodeTXT] turns each into TXT strings.
func (a *Audience) Seal(p int64, list []byte, n int) ([][]byte, error) {
	if !validCount(n) {
		return nil, fmt.Errorf("relaylist: seal: %d chunks, want a power of two or three times one, up to %d", n, MaxChunks)
	}
	total := a.capacity(p, n)
	if total < len(list)+sealedOver {
		return nil, fmt.Errorf("relaylist: seal: a %d-byte list does not fit %d chunks", len(list), n)
	}
	key := a.sealKey(p)
	aead, err := chacha20poly1305.NewX(key)
	if err != nil {
		return nil, fmt.Errorf("relaylist: seal: %w", err)
	}
	nonce := a.mac(key, []byte("nonce"), list)[:nonceLen]
	pt := make([]byte, total-maskLen-nonceLen-chacha20poly1305.Overhead)
	binary.BigEndian.PutUint32(pt, uint32(len(list)))
	copy(pt[lenLen:], list)
	stream := make([]byte, 0, total)
	stream = binary.BigEndian.AppendUint16(stream, uint16(n)^a.mask(p))
	stream = append(stream, nonce...)
	stream = aead.Seal(stream, nonce, pt, ad(p, n))
	chunks := make([][]byte, n)
	off := 0
	for i := range n {
		s := a.ChunkSize(p, i)
		chunks[i] = stream[off : off+s : off+s]
		off += s
	}
	return chunks, nil
}

// Count returns how many chunks the list of period p takes, read from
// chunk 0. It checks only that the count is one a list may have (true of
// about one random chunk in 3,000): [Audience.Open] authenticates it.
func (a *Audience) Count(p int64, chunk0 []byte) (int, error) {
	if len(chunk0) < maskLen {
		return 0, fmt.Errorf("%w: chunk 0 is %d bytes", ErrSealed, len(chunk0))
	}
	n := int(binary.BigEndian.Uint16(chunk0) ^ a.mask(p))
	if !validCount(n) {
		return 0, fmt.Errorf("%w: not a chunk count (wrong audience or period?)", ErrSealed)
	}
	return n, nil
}

// Open joins the chunks of period p and opens them, returning the signed
// list (still to be checked with [Decode]). Errors wrap [ErrSealed].
func (a *Audience) Open(p int64, chunks [][]byte) ([]byte, error) {
	if len(chunks) == 0 {
		return nil, fmt.Errorf("%w: no chunks", ErrSealed)
	}
	n, err := a.Count(p, chunks[0])
	if err != nil {
		return nil, err
	}
	if len(chunks) != n {
		return nil, fmt.Errorf("%w: %d chunks, chunk 0 says %d", ErrSealed, len(chunks), n)
	}
	var stream []byte
	for i, c := range chunks {
		if s := a.ChunkSize(p, i); len(c) != s {
			return nil, fmt.Errorf("%w: chunk %d is %d bytes, want %d", ErrSealed, i, len(c), s)
		}
		stream = append(stream, c...)
	}
	aead, err := chacha20poly1305.NewX(a.sealKey(p))
	if err != nil {
		return nil, fmt.Errorf("relaylist: open: %w", err)
	}
	nonce := stream[maskLen : maskLen+nonceLen]
	pt, err := aead.Open(nil, nonce, stream[maskLen+nonceLen:], ad(p, n))
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrSealed, err)
	}
	size := binary.BigEndian.Uint32(pt)
	if uint64(size) > uint64(len(pt)-lenLen) || size > MaxSize {
		return nil, fmt.Errorf("%w: length %d in %d bytes", ErrSealed, size, len(pt)-lenLen)
	}
	return pt[lenLen : lenLen+int(size)], nil
}

// EncodeTXT returns a chunk as the strings of a TXT record: standard
// base64 cut into strings of 255 characters and one shorter one.
func EncodeTXT(chunk []byte) []string {
	enc := base64.StdEncoding.EncodeToString(chunk)
	var strs []string
	for len(enc) > 255 {
		strs = append(strs, enc[:255])
		enc = enc[255:]
	}
	return append(strs, enc)
}

// DecodeTXT decodes the strings of a chunk's TXT record. It fails unless
// they are standard base64 of one of the [ChunkSizes].
func DecodeTXT(txt []string) ([]byte, error) {
	n := 0
	for _, s := range txt {
		n += len(s)
		// The decoder skips CR and LF, which would give one chunk many
		// spellings.
		if strings.ContainsAny(s, "\r\n") {
			return nil, fmt.Errorf("%w: line break in a TXT string", ErrMalformed)
		}
	}
	if n > base64.StdEncoding.EncodedLen(ChunkSizes[len(ChunkSizes)-1]) {
		return nil, fmt.Errorf("%w: TXT record of %d characters", ErrMalformed, n)
	}
	b, err := base64.StdEncoding.Strict().DecodeString(strings.Join(txt, ""))
	if err != nil {
		return nil, fmt.Errorf("%w: TXT record is not base64", ErrMalformed)
	}
	for _, s := range ChunkSizes {
		if len(b) == s {
			return b, nil
		}
	}
	return nil, fmt.Errorf("%w: %d-byte chunk", ErrMalformed, len(b))
}
