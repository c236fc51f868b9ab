package client_test

import (
	"encoding/binary"
	"io"
	"slices"
	"testing"
	"time"

	"github.com/merpati/merpati/relay/access"
	"github.com/merpati/merpati/relay/relaytest"
	"github.com/merpati/merpati/transport"
	"github.com/merpati/merpati/transport/link"
)

// TestTLSRecordSizes downloads 8 MiB through the TLS carrier from a
// source that writes 32 KiB at a time, through a tap that reads the
// relay's records: in the bulk of the transfer nearly every record is
// full. (Frames of a 32 KiB write need 32,786 bytes, which TLS used to cut
// into two full records and a 40-byte one: a short record and a system
// call more per 32 KiB, and a pattern on the wire.)
func TestTLSRecordSizes(t *testing.T) {
	source := relaytest.StartSource(t)
	cov := relaytest.StartCover(t)
	r := startRelay(t, cov, []string{"2=" + source})
	l := r.AddKey(t, "alice", access.Entry{})
	var rc recordCounter
	tapped := *l
	tapped.Relays = []string{startRecordTap(t, r.Addr, &rc)}
	s, err := relaytest.Session(t, &tapped, link.CarrierTLS)
	if err != nil {
		t.Fatal(err)
	}
	st, err := relaytest.Open(s, transport.DCTarget(2))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	st.SetDeadline(time.Now().Add(60 * time.Second))
	const total = 8 << 20
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], total)
	if _, err := st.Write(n[:]); err != nil {
		t.Fatal(err)
	}
	got, err := io.Copy(io.Discard, st)
	if err != nil || got != total {
		t.Fatalf("read %d bytes, %v; want %d", got, err, total)
	}
	rc.mu.Lock()
	sizes := slices.Clone(rc.sizes)
	rc.mu.Unlock()
	// The bulk: past the first MiB (TLS starts with small records) and
	// short of the last 64 KiB.
	var bulk []int
	sum := 0
	for _, n := range sizes {
		sum += n
		if sum > 1<<20 && sum < total-64<<10 {
			bulk = append(bulk, n)
		}
	}
	short := 0
	for _, n := range bulk {
		if n < 1024 {
			short++
		}
	}
	t.Logf("%d records in the bulk, %d shorter than 1 KiB:%s", len(bulk), short, histogram(bulk))
	if len(bulk) < 300 {
		t.Fatalf("only %d records in 7 MiB", len(bulk))
	}
	if short*20 > len(bulk) {
		t.Errorf("%d of %d records in the bulk are shorter than 1 KiB, want at most 5%%", short, len(bulk))
	}
}
