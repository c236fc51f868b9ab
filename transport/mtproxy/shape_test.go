package mtproxy

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"testing"
)

// packets splits b, a stream in framing p, into whole packets (header
// included) and the bytes of a packet cut short. It is the tests' own
// reading of core.telegram.org/mtproto/mtproto-transports.
func packets(p Protocol, b []byte) (pkts [][]byte, rest []byte) {
	for len(b) > 0 {
		hl, n := 4, 0
		switch {
		case p == Abridged && b[0]&0x80 != 0: // quick ack
		case p == Abridged && b[0] == 0x7f:
			if len(b) < 4 {
				return pkts, b
			}
			n = 4 * (int(b[1]) | int(b[2])<<8 | int(b[3])<<16)
		case p == Abridged:
			hl, n = 1, 4*int(b[0])
		default:
			if len(b) < 4 {
				return pkts, b
			}
			if v := binary.LittleEndian.Uint32(b); v&(1<<31) == 0 {
				n = int(v)
			}
		}
		if len(b) < hl || len(b)-hl < n {
			return pkts, b
		}
		pkts = append(pkts, b[:hl+n])
		b = b[hl+n:]
	}
	return pkts, nil
}

// isNOP reports whether pkt, a padded intermediate packet, is a NOP: a
// payload of 4 to 15 bytes that starts with a zero word.
func isNOP(pkt []byte) bool {
	return len(pkt) >= 8 && len(pkt) < 4+16 && binary.LittleEndian.Uint32(pkt[4:]) == 0
}

// shapeStream runs a shaper for p over chunks, then ends it, and checks
// what the app gets:
//   - every chunk is at least MinRecordLen bytes long, except (without
//     padded intermediate framing) one of whole packets only;
//   - with the NOPs taken out, the app's stream is the datacenter's, up to
//     a packet cut short at the end (so NOPs come only between packets);
//   - every packet goes out in the push that completes it.
func shapeStream(p Protocol, chunks [][]byte) (out [][]byte, err error) {
	s := newShaper(p)
	var in, got []byte
	check := func(c []byte) error {
		if len(c) == 0 {
			return nil
		}
		if len(c) < MinRecordLen && !s.raw {
			if p == PaddedIntermediate {
				return fmt.Errorf("chunk of %d bytes: %x", len(c), c)
			}
			if _, rest := packets(p, got); len(rest) != 0 {
				return fmt.Errorf("short chunk of %d bytes after a partial packet", len(c))
			}
			if _, rest := packets(p, c); len(rest) != 0 {
				return fmt.Errorf("short chunk of %d bytes with a partial packet", len(c))
			}
		}
		out = append(out, bytes.Clone(c))
		got = append(got, c...)
		return nil
	}
	// strip returns got without NOPs, whole packets and the rest.
	strip := func() ([][]byte, []byte) {
		pkts, rest := packets(p, got)
		var kept [][]byte
		for _, pkt := range pkts {
			if p == PaddedIntermediate && isNOP(pkt) {
				continue
			}
			kept = append(kept, pkt)
		}
		return kept, rest
	}
	for _, c := range chunks {
		in = append(in, c...)
		if err := check(s.push(c)); err != nil {
			return out, err
		}
		if held := len(s.buf) + s.nhdr; held >= 2*MinRecordLen {
			return out, fmt.Errorf("%d bytes held", held)
		}
		want, _ := packets(p, in)
		if p == PaddedIntermediate {
			want = withoutNOPs(want)
		}
		kept, _ := strip()
		if len(kept) < len(want) {
			return out, fmt.Errorf("after %d bytes in, %d of %d whole packets out", len(in), len(kept), len(want))
		}
	}
	if err := check(s.end()); err != nil {
		return out, err
	}
	kept, rest := strip()
	flat := append(bytes.Join(kept, nil), rest...)
	wantPkts, wantRest := packets(p, in)
	want := bytes.Join(wantPkts, nil)
	if p == PaddedIntermediate {
		want = bytes.Join(withoutNOPs(wantPkts), nil)
	}
	if len(flat) < len(want) || !bytes.HasPrefix(append(want, wantRest...), flat) {
		return out, fmt.Errorf("app got %x,\nwant %x (+ %x)", flat, want, wantRest)
	}
	return out, nil
}

func withoutNOPs(pkts [][]byte) [][]byte {
	var kept [][]byte
	for _, pkt := range pkts {
		if !isNOP(pkt) {
			kept = append(kept, pkt)
		}
	}
	return kept
}

// intermediate returns a packet of n payload bytes in intermediate
// framing, with pad bytes of padding counted in its length.
func intermediate(n, pad int) []byte {
	b := binary.LittleEndian.AppendUint32(nil, uint32(n+pad))
	for i := range n + pad {
		b = append(b, byte(i+1))
	}
	return b
}

// split cuts b at the given lengths, the rest going in a last chunk.
func split(b []byte, at ...int) [][]byte {
	var cs [][]byte
	for _, n := range at {
		cs = append(cs, b[:n])
		b = b[n:]
	}
	if len(b) > 0 {
		cs = append(cs, b)
	}
	return cs
}

func cat(bs ...[]byte) []byte { return bytes.Join(bs, nil) }

func TestShaper(t *testing.T) {
	quickAck := []byte{0x11, 0x22, 0x33, 0x80 | 0x44}
	transportErr := binary.LittleEndian.AppendUint32([]byte{4, 0, 0, 0}, uint32(0xffffffff-404+1))
	msg := intermediate(72, 3) // an MTProto message, padded
	big := intermediate(40_000, 1)
	for _, tc := range []struct {
		name   string
		p      Protocol
		chunks [][]byte
		sizes  []int // chunk sizes out; 0 in a slot means "at least MinRecordLen"
	}{
		{"header alone, then payload", PaddedIntermediate, split(msg, 4), []int{len(msg)}},
		{"payload in pieces", PaddedIntermediate, split(msg, 4, 10, 30), []int{0, 0}},
		{"lone quick ack", PaddedIntermediate, [][]byte{quickAck}, []int{0}},
		{"quick ack with a message", PaddedIntermediate, [][]byte{cat(quickAck, msg)}, []int{4 + len(msg)}},
		{"lone transport error", PaddedIntermediate, [][]byte{transportErr}, []int{0}},
		{"error then a header", PaddedIntermediate, split(cat(transportErr, msg), 10), []int{0, len(msg)}},
		{"big packet, last bytes alone", PaddedIntermediate, split(big, 4, 32768, len(big)-32768-4-3), []int{0, 0, 0}},
		{"cut short, tail dropped", PaddedIntermediate, [][]byte{cat(msg, msg[:70])}, []int{len(msg) + 70 - 8}},
		{"cut short, tail sent", PaddedIntermediate, [][]byte{intermediate(22, 0)[:20]}, []int{20}},
		{"cut short in a header", PaddedIntermediate, [][]byte{cat(transportErr, msg[:2])}, []int{0}},
		{"intermediate quick ack", Intermediate, [][]byte{quickAck}, []int{4}},
		{"intermediate header alone", Intermediate, split(intermediate(40, 0), 4), []int{44}},
		{"abridged", Abridged, split(cat([]byte{10}, make([]byte, 40), []byte{0x7f, 200, 0, 0}, make([]byte, 800)), 1, 3, 40, 100), []int{41, 0, 0}},
		{"abridged quick ack", Abridged, [][]byte{{0x81, 2, 3, 4}, {1, 0, 0, 0, 0}}, []int{4, 5}},
	} {
		out, err := shapeStream(tc.p, tc.chunks)
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		var sizes []int
		for _, c := range out {
			sizes = append(sizes, len(c))
		}
		ok := len(sizes) == len(tc.sizes)
		for i := 0; ok && i < len(sizes); i++ {
			ok = tc.sizes[i] == sizes[i] || tc.sizes[i] == 0 && sizes[i] >= MinRecordLen
		}
		if !ok {
			t.Errorf("%s: chunks of %v bytes, want %v", tc.name, sizes, tc.sizes)
		}
	}
}

// TestShaperNOPs checks the NOP packets themselves: after an 8-byte
// packet, every size from 9 to 15 bytes shows up (random sizes, none
// shorter than the floor needs).
func TestShaperNOPs(t *testing.T) {
	seen := map[int]bool{}
	for range 2000 {
		s := newShaper(PaddedIntermediate)
		out := s.push([]byte{4, 0, 0, 0, 1, 2, 3, 4}) // an 8-byte packet
		if len(out) < MinRecordLen || len(out) > 8+nopMax {
			t.Fatalf("%d bytes out", len(out))
		}
		pkts, rest := packets(PaddedIntermediate, out)
		if len(pkts) != 2 || len(rest) != 0 || !isNOP(pkts[1]) {
			t.Fatalf("out %x", out)
		}
		seen[len(pkts[1])] = true
	}
	for n := MinRecordLen - 8; n <= nopMax; n++ {
		if !seen[n] {
			t.Errorf("no NOP of %d bytes", n)
		}
	}
	s := newShaper(PaddedIntermediate)
	out := s.push([]byte{0x01, 0x02, 0x03, 0x84}) // quick ack
	if pkts, _ := packets(PaddedIntermediate, out); len(out) < MinRecordLen || len(pkts) != 2 || len(pkts[0]) != 4 {
		t.Fatalf("quick ack: %x", out)
	}
}

// TestShaperRandom runs random streams through the shaper in random
// pieces, for each framing.
func TestShaperRandom(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, p := range []Protocol{Abridged, Intermediate, PaddedIntermediate} {
		for range 300 {
			in := randomStream(r, p)
			var cuts []int
			for left := len(in); left > 0; {
				n := 1 + r.IntN(min(left, 1+r.IntN(3000)))
				cuts = append(cuts, n)
				left -= n
			}
			if _, err := shapeStream(p, split(in, cuts...)); err != nil {
				t.Fatalf("%x: %v", p[0], err)
			}
		}
	}
}

// randomStream makes packets a datacenter might send in framing p: quick
// acks, transport errors, messages small and large, sometimes a packet
// cut short at the end.
func randomStream(r *rand.Rand, p Protocol) []byte {
	var b []byte
	for range r.IntN(20) {
		switch k := r.IntN(10); {
		case k < 2: // quick ack
			ack := binary.LittleEndian.AppendUint32(nil, r.Uint32()|1<<31)
			if p == Abridged {
				ack = binary.BigEndian.AppendUint32(nil, r.Uint32()|1<<31)
			}
			b = append(b, ack...)
		case k < 3: // transport error
			b = append(b, frame(p, []byte{0x6c, 0xfe, 0xff, 0xff}, r.IntN(4))...)
		default:
			n := 4 * (6 + r.IntN(64))
			if k == 9 {
				n = 4 * r.IntN(20_000)
			}
			b = append(b, frame(p, make([]byte, n), r.IntN(4))...)
		}
	}
	if r.IntN(4) == 0 && len(b) > 0 {
		b = b[:r.IntN(len(b))]
	}
	return b
}

// frame frames payload in p, with pad random bytes of padding in padded
// intermediate framing.
func frame(p Protocol, payload []byte, pad int) []byte {
	switch p {
	case Abridged:
		if n := len(payload) / 4; n < 0x7f {
			return append([]byte{byte(n)}, payload...)
		} else {
			return append([]byte{0x7f, byte(n), byte(n >> 8), byte(n >> 16)}, payload...)
		}
	case PaddedIntermediate:
		payload = append(payload, make([]byte, pad)...)
	}
	return append(binary.LittleEndian.AppendUint32(nil, uint32(len(payload))), payload...)
}

// FuzzShaper feeds the shaper any bytes, cut anywhere, in each framing:
// the datacenter's bytes are not trusted to be well formed.
func FuzzShaper(f *testing.F) {
	f.Add([]byte{4, 0, 0, 0, 0x6c, 0xfe, 0xff, 0xff}, []byte{3}, byte(2))
	f.Add([]byte{1, 2, 3, 0x84, 0x10, 0, 0, 0}, []byte{1, 1, 1}, byte(1))
	f.Add([]byte{0x7f, 1, 0, 0, 0x81, 2, 3, 4, 2}, []byte{5}, byte(0))
	f.Add(frame(PaddedIntermediate, make([]byte, 72), 3), []byte{4, 30}, byte(2))
	f.Add([]byte{0xff, 0xff, 0xff, 0x7f, 1}, []byte{}, byte(1))
	f.Fuzz(func(t *testing.T, in, cuts []byte, proto byte) {
		p := []Protocol{Abridged, Intermediate, PaddedIntermediate}[int(proto)%3]
		var at []int
		left := len(in)
		for _, c := range cuts {
			n := min(left, int(c))
			at = append(at, n)
			left -= n
		}
		if _, err := shapeStream(p, split(in, at...)); err != nil {
			t.Fatal(err)
		}
	})
}
