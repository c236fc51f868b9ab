package relaylist

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/merpati/merpati/transport/link"
)

func testAudience(b byte) *Audience {
	return NewAudience([link.BootstrapKeySize]byte(bytes.Repeat([]byte{b}, link.BootstrapKeySize)))
}

// seal seals data for period p in as many chunks as a publishes.
func seal(t testing.TB, a *Audience, p int64, data []byte) [][]byte {
	t.Helper()
	n, err := a.Chunks(p, len(data))
	if err != nil {
		t.Fatal(err)
	}
	chunks, err := a.Seal(p, data, n)
	if err != nil {
		t.Fatal(err)
	}
	return chunks
}

// sealTXT seals data for period p and returns each chunk's TXT strings.
func sealTXT(t testing.TB, a *Audience, p int64, data []byte) [][]string {
	t.Helper()
	var txts [][]string
	for _, c := range seal(t, a, p, data) {
		txts = append(txts, EncodeTXT(c))
	}
	return txts
}

// openTXT does what a client does with the TXT records.
func openTXT(a *Audience, p int64, txts [][]string) ([]byte, error) {
	var chunks [][]byte
	for _, txt := range txts {
		c, err := DecodeTXT(txt)
		if err != nil {
			return nil, err
		}
		chunks = append(chunks, c)
	}
	if len(chunks) > 0 {
		if _, err := a.Count(p, chunks[0]); err != nil {
			return nil, err
		}
	}
	return a.Open(p, chunks)
}

func TestSealRoundTrip(t *testing.T) {
	a := testAudience(1)
	p := PeriodOf(now)
	for _, n := range []int{1, 5, 9, 60, 400} {
		data, err := Sign(testList(n, 7, now.Add(time.Hour)), testKey)
		if err != nil {
			t.Fatal(err)
		}
		txts := sealTXT(t, a, p, data)
		got, err := openTXT(a, p, txts)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("%d entries: open: %v", n, err)
		}
		if c := len(txts); !validCount(c) {
			t.Errorf("%d chunks: not a power of two or three times one", c)
		}
		// Deterministic: the same list seals to the same chunks.
		if again := sealTXT(t, a, p, data); !equalTXT(again, txts) {
			t.Error("sealing is not deterministic")
		}
		t.Logf("%d entries: %d-byte list in %d chunks", n, len(data), len(txts))
	}
}

func equalTXT(a, b [][]string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if strings.Join(a[i], "") != strings.Join(b[i], "") {
			return false
		}
	}
	return true
}

// TestSealedLooksRandom: no fixed string, magic or label; what is on the
// wire differs between audiences and periods; common lengths only.
func TestSealedLooksRandom(t *testing.T) {
	data, err := Sign(testList(9, 1, now.Add(time.Hour)), testKey)
	if err != nil {
		t.Fatal(err)
	}
	p := PeriodOf(now)
	label := regexp.MustCompile(`^[a-z]{3,}(-[a-z]{3,})?[0-9]{0,2}$`)
	seenName := map[string]string{}
	seenTXT := map[string]string{}
	lengths := map[string][]int{} // chunk sizes, by chunk index
	for _, c := range []struct {
		name string
		a    *Audience
		p    int64
	}{{"A/p", testAudience(1), p}, {"B/p", testAudience(2), p}, {"A/p+1", testAudience(1), p + 1}, {"A/p-1", testAudience(1), p - 1}} {
		txts := sealTXT(t, c.a, c.p, data)
		for i, txt := range txts {
			name := c.a.Name(c.p, i, "b.example.net")
			l := strings.TrimSuffix(name, ".b.example.net.")
			if !label.MatchString(l) || len(l) < 5 || len(l) > 16 {
				t.Errorf("%s: label %q", c.name, l)
			}
			lengths[c.name] = append(lengths[c.name], len(strings.Join(txt, "")))
			if prev, ok := seenName[name]; ok {
				t.Errorf("%s: name %s also used by %s", c.name, name, prev)
			}
			seenName[name] = c.name
			total := 0
			for j, s := range txt {
				if prev, ok := seenTXT[s]; ok {
					t.Errorf("%s: TXT string also sent for %s", c.name, prev)
				}
				seenTXT[s] = c.name
				if j < len(txt)-1 && len(s) != 255 {
					t.Errorf("%s: string %d of %d is %d characters", c.name, j, len(txt), len(s))
				}
				if strings.HasPrefix(s, base64.StdEncoding.EncodeToString([]byte(Magic))[:4]) {
					t.Errorf("%s: TXT starts with the list magic", c.name)
				}
				total += len(s)
			}
			switch total {
			case 272, 328, 368, 408:
			default:
				t.Errorf("%s: chunk %d is %d characters", c.name, i, total)
			}
		}
	}
	// The sizes of the chunks, taken in order, differ between audiences
	// and between periods: they are drawn from the key and the period,
	// not from the chunk's index. (The keys are fixed, so this holds or
	// fails for good.)
	for _, pair := range [][2]string{{"A/p", "B/p"}, {"A/p", "A/p+1"}, {"B/p", "A/p+1"}, {"A/p", "A/p-1"}} {
		a, b := lengths[pair[0]], lengths[pair[1]]
		n := min(len(a), len(b))
		if n < 4 {
			t.Fatalf("%s and %s: %d and %d chunks, want several", pair[0], pair[1], len(a), len(b))
		}
		if slices.Equal(a[:n], b[:n]) {
			t.Errorf("%s and %s: the same sequence of chunk sizes %v", pair[0], pair[1], a[:n])
		}
	}
}

// TestOpenWithoutSecret: what a resolver holds, without the link's
// secret, yields nothing: another audience's key, another period, any
// altered byte, mixed or missing chunks all fail.
func TestOpenWithoutSecret(t *testing.T) {
	a, b := testAudience(1), testAudience(2)
	p := PeriodOf(now)
	data, err := Sign(testList(30, 1, now.Add(time.Hour)), testKey)
	if err != nil {
		t.Fatal(err)
	}
	chunks := seal(t, a, p, data)
	n := len(chunks)
	if n < 2 {
		t.Fatalf("want several chunks, got %d", n)
	}
	if _, err := b.Open(p, chunks); !errors.Is(err, ErrSealed) {
		t.Errorf("other audience: %v", err)
	}
	if _, err := a.Open(p+1, chunks); !errors.Is(err, ErrSealed) {
		t.Errorf("other period: %v", err)
	}
	if _, err := a.Open(p, chunks[:n-1]); !errors.Is(err, ErrSealed) {
		t.Errorf("missing chunk: %v", err)
	}
	for i := range chunks {
		for _, off := range []int{0, 1, 2, 25, 26, len(chunks[i]) - 1} {
			bad := make([][]byte, n)
			for j := range chunks {
				bad[j] = bytes.Clone(chunks[j])
			}
			bad[i][off] ^= 0x40
			if _, err := a.Open(p, bad); !errors.Is(err, ErrSealed) {
				t.Errorf("chunk %d byte %d altered: %v", i, off, err)
			}
		}
	}
	other, _ := Sign(testList(31, 2, now.Add(time.Hour)), testKey)
	chunks2, err := a.Seal(p, other, n)
	if err != nil {
		t.Fatal(err)
	}
	mixed := append([][]byte{chunks[0]}, chunks2[1:]...)
	if _, err := a.Open(p, mixed); !errors.Is(err, ErrSealed) {
		t.Errorf("mixed lists: %v", err)
	}
	// The plaintext appears nowhere in the chunks.
	all := bytes.Join(chunks, nil)
	if bytes.Contains(all, []byte(Magic)) || bytes.Contains(all, []byte("relay1.example")) {
		t.Error("chunks contain plaintext")
	}
}

func TestValidCount(t *testing.T) {
	var got []int
	for n := range 100 {
		if validCount(n) {
			got = append(got, n)
		}
	}
	want := []int{1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("valid counts %v, want %v", got, want)
	}
	if !validCount(MaxChunks) || validCount(2*MaxChunks) || validCount(3*MaxChunks) {
		t.Error("MaxChunks bound")
	}
}

func TestDecodeTXT(t *testing.T) {
	good := EncodeTXT(bytes.Repeat([]byte{9}, 246))
	if b, err := DecodeTXT(good); err != nil || len(b) != 246 {
		t.Fatalf("DecodeTXT: %d bytes, %v", len(b), err)
	}
	for _, bad := range [][]string{
		nil,
		{""},
		{"v=merpati1 n=2 len=1139 h=0123"},
		EncodeTXT(bytes.Repeat([]byte{9}, 245)),
		EncodeTXT(bytes.Repeat([]byte{9}, 307)),
		EncodeTXT(bytes.Repeat([]byte{9}, 714)),
		{strings.Repeat("A", 2000)},
		{strings.Repeat("A", 327) + "="},
	} {
		if _, err := DecodeTXT(bad); !errors.Is(err, ErrMalformed) {
			t.Errorf("DecodeTXT(%.40q): %v", bad, err)
		}
	}
}

// FuzzDecodeTXT feeds the TXT decoding untrusted strings.
func FuzzDecodeTXT(f *testing.F) {
	f.Add(strings.Join(EncodeTXT(bytes.Repeat([]byte{1}, 306)), "\x00"))
	f.Add("v=merpati1 n=2 len=1139 h=0123456789abcdef0123")
	f.Fuzz(func(t *testing.T, s string) {
		b, err := DecodeTXT(strings.Split(s, "\x00"))
		if err != nil {
			return
		}
		if got := strings.Join(EncodeTXT(b), ""); got != strings.ReplaceAll(s, "\x00", "") {
			t.Fatalf("re-encoding differs")
		}
	})
}

// FuzzOpen feeds the decryption framing untrusted chunks: the first
// sealed for the fuzzing audience and period, then mangled.
func FuzzOpen(f *testing.F) {
	a := testAudience(3)
	p := PeriodOf(now)
	data, err := Sign(testList(4, 1, now.Add(time.Hour)), testKey)
	if err != nil {
		f.Fatal(err)
	}
	chunks := seal(f, a, p, data)
	n := len(chunks)
	f.Add(chunks[0], chunks[1], uint8(2))
	f.Add(chunks[0], chunks[1], uint8(n))
	f.Add(chunks[0], []byte{}, uint8(1))
	f.Add([]byte{0, 1}, chunks[1], uint8(3))
	f.Fuzz(func(t *testing.T, c0, c1 []byte, n uint8) {
		in := [][]byte{c0, c1}
		for i := 2; i < int(n%8); i++ {
			in = append(in, c1)
		}
		in = in[:min(len(in), max(1, int(n%8)))]
		if _, err := a.Count(p, c0); err != nil && !errors.Is(err, ErrSealed) {
			t.Fatalf("Count: %v", err)
		}
		got, err := a.Open(p, in)
		if err != nil {
			if !errors.Is(err, ErrSealed) {
				t.Fatalf("Open: %v", err)
			}
			return
		}
		if !bytes.Equal(got, data) {
			t.Fatalf("Open accepted something other than the sealed list")
		}
	})
}
