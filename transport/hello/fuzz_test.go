package hello

import (
	"bytes"
	"errors"
	"runtime"
	"testing"
)

// FuzzParse checks that Parse and ReadRecord never panic, that they agree,
// and that a parsed hello is consistent with its own Raw. The seeds in
// testdata/fuzz/FuzzParse include a record captured from Chromium 156 and
// records written by uTLS and crypto/tls.
func FuzzParse(f *testing.F) {
	f.Add(buildRecord(chromeLike()))
	f.Add(buildRecord(helloSpec{ciphers: []uint16{0x002f}}))
	f.Fuzz(func(t *testing.T, data []byte) {
		rec, rerr := ReadRecord(bytes.NewReader(data))
		if !bytes.HasPrefix(data, rec) {
			t.Fatalf("ReadRecord returned bytes that are not a prefix of its input")
		}
		if len(rec) > MaxRecordLen {
			t.Fatalf("ReadRecord returned %d bytes", len(rec))
		}
		h, err := Parse(data)
		if err != nil {
			if h != nil {
				t.Fatal("Parse returned a hello with an error")
			}
			return
		}
		if rerr != nil || !bytes.Equal(rec, data) {
			t.Fatalf("Parse accepted a record ReadRecord did not read whole: %v", rerr)
		}
		if !bytes.Equal(h.Raw, data[RecordHeaderLen:]) {
			t.Fatal("Raw is not the record payload")
		}
		if len(h.Random) != 32 || len(h.SessionID) > 32 ||
			!bytes.Equal(h.Raw[h.SessionIDOffset:h.SessionIDOffset+len(h.SessionID)], h.SessionID) {
			t.Fatalf("inconsistent random %x / session id %x at %d", h.Random, h.SessionID, h.SessionIDOffset)
		}
		if len(h.extData) != len(h.Extensions) {
			t.Fatal("extension bodies and types disagree")
		}
	})
}

// TestParseAllocBound checks that Parse allocates memory in proportion to
// its input, even for inputs built to maximise the number of decoded
// values: a record full of empty extensions and one full of 16-bit lists.
func TestParseAllocBound(t *testing.T) {
	manyExts := helloSpec{ciphers: []uint16{0x1301}}
	for i := range (MaxRecordPayload - 100) / 4 {
		manyExts.exts = append(manyExts.exts, ext{typ: uint16(0x1000 + i)})
	}
	big := make([]uint16, (MaxRecordPayload-200)/2)
	bigLists := helloSpec{ciphers: big}
	tests := []struct {
		name string
		rec  []byte
	}{
		{"many extensions", buildRecord(manyExts)},
		{"long cipher list", buildRecord(bigLists)},
		{"chrome-like", buildRecord(chromeLike())},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if len(tt.rec) > MaxRecordLen {
				t.Fatalf("test record of %d bytes", len(tt.rec))
			}
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			const runs = 20
			for range runs {
				if _, err := Parse(tt.rec); err != nil && !errors.Is(err, ErrMalformed) {
					t.Fatal(err)
				}
			}
			runtime.ReadMemStats(&after)
			perRun := (after.TotalAlloc - before.TotalAlloc) / runs
			if limit := uint64(16 * len(tt.rec)); perRun > limit {
				t.Errorf("Parse of %d bytes allocated %d bytes, limit %d", len(tt.rec), perRun, limit)
			}
			t.Logf("%d-byte record: %d bytes allocated", len(tt.rec), perRun)
		})
	}
}
