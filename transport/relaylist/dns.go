package relaylist

import (
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// How a list is published in DNS (see package relay/dnsserver for the
// server and client/bootstrap for the fetcher): an index TXT record at
// IndexLabel.ZONE names the list by hash, and its chunks are TXT records
// at <i>.<hash>.ZONE, each carrying ChunkSize bytes in base64.
const (
	// ChunkSize is how many bytes of a signed list one TXT chunk carries:
	// 800 base64 characters in four TXT strings, so that a chunk answer
	// stays near 900 bytes, below the EDNS0 payload size of 1232.
	ChunkSize = 600
	// HashLen is how many bytes of the list's SHA-256 name its chunks.
	HashLen = 10
	// IndexLabel is the label of the index record under the zone.
	IndexLabel = "_n"
	// IndexVersion starts the index record's text.
	IndexVersion = "v=merpati1"
)

// ErrIndex means an index record is malformed.
var ErrIndex = errors.New("relaylist: malformed index record")

// An Index describes one published list: how many chunks, how many bytes,
// and the hash that names its chunks and checks their concatenation.
type Index struct {
	Chunks int
	Size   int
	Hash   [HashLen]byte
}

// IndexOf returns the index of a signed list.
func IndexOf(data []byte) Index {
	sum := Digest(data)
	ix := Index{Chunks: (len(data) + ChunkSize - 1) / ChunkSize, Size: len(data)}
	copy(ix.Hash[:], sum[:HashLen])
	return ix
}

// HashLabel is the DNS label of the list's chunks: the hash in lowercase
// hex.
func (ix Index) HashLabel() string { return hex.EncodeToString(ix.Hash[:]) }

// String returns the index record's text,
// "v=merpati1 n=<chunks> len=<bytes> h=<hash>".
func (ix Index) String() string {
	return fmt.Sprintf("%s n=%d len=%d h=%s", IndexVersion, ix.Chunks, ix.Size, ix.HashLabel())
}

// ChunkName returns the owner name of chunk i under zone (a FQDN).
func (ix Index) ChunkName(i int, zone string) string {
	return strconv.Itoa(i) + "." + ix.HashLabel() + "." + strings.TrimPrefix(zone, ".")
}

// Check reports whether data (the chunks put together) is the list ix
// describes, with an error wrapping [ErrMalformed] if not.
func (ix Index) Check(data []byte) error {
	if len(data) != ix.Size {
		return fmt.Errorf("%w: got %d bytes, index says %d", ErrMalformed, len(data), ix.Size)
	}
	sum := Digest(data)
	if subtle.ConstantTimeCompare(sum[:HashLen], ix.Hash[:]) != 1 {
		return fmt.Errorf("%w: chunks do not match the index hash", ErrMalformed)
	}
	return nil
}

// ParseIndex parses an index record's text. Unknown fields are ignored,
// for later versions.
func ParseIndex(s string) (Index, error) {
	f := strings.Fields(s)
	if len(f) == 0 || f[0] != IndexVersion {
		return Index{}, fmt.Errorf("%w: want %q first", ErrIndex, IndexVersion)
	}
	var ix Index
	var seen int
	for _, kv := range f[1:] {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			continue
		}
		switch k {
		case "n", "len":
			n, err := strconv.Atoi(v)
			if err != nil || n <= 0 || n > MaxSize {
				return Index{}, fmt.Errorf("%w: %s=%q", ErrIndex, k, v)
			}
			if k == "n" {
				ix.Chunks = n
				seen |= 1
			} else {
				ix.Size = n
				seen |= 2
			}
		case "h":
			b, err := hex.DecodeString(v)
			if err != nil || len(b) != HashLen {
				return Index{}, fmt.Errorf("%w: h=%q", ErrIndex, v)
			}
			copy(ix.Hash[:], b)
			seen |= 4
		}
	}
	if seen != 7 {
		return Index{}, fmt.Errorf("%w: want n, len and h", ErrIndex)
	}
	if want := (ix.Size + ChunkSize - 1) / ChunkSize; ix.Chunks != want {
		return Index{}, fmt.Errorf("%w: %d chunks for %d bytes, want %d", ErrIndex, ix.Chunks, ix.Size, want)
	}
	return ix, nil
}
