package relaylist

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"hash"
)

// Chunk labels are drawn from a keyed stream by a small generative model
// of English words (see "Names" in the package documentation), so that
// they read like the words and host names around them: no fixed length,
// alphabet or syllable shape that a pattern could pick out. The tables
// below are cluster frequencies counted in the words of 5 to 16 letters
// of the manual pages and /usr/share/doc text of a Debian system, with
// single consonants between vowels counted twice (the model has no other
// way to favour them, as English does). A generated label matches a
// pattern fitted to the tables; so do more than half of those real
// words (57% of them).

// A part is one cluster of a label and its weight.
type part struct {
	s string
	w int
}

// labelLengths are the weights of the target lengths 5, 6, ... 16. Short
// labels are rarer than among English words: they carry fewer bits, and
// two chunks that share a label cost the server a longer answer.
var labelLengths = [...]int{3, 8, 16, 22, 24, 24, 22, 20, 18, 16, 14, 13}

// initials are the consonant clusters that start a word ("" starts it with a vowel).
var initials = []part{
	{"", 400}, {"f", 101}, {"s", 99}, {"m", 93}, {"r", 92}, {"d", 92}, {"c", 88}, {"p", 72},
	{"l", 72}, {"b", 64}, {"n", 62}, {"t", 54}, {"g", 47}, {"h", 44}, {"v", 37}, {"pr", 35},
	{"k", 34}, {"w", 31}, {"st", 18}, {"j", 17}, {"tr", 17}, {"ch", 15}, {"z", 11}, {"sh", 10},
	{"gr", 10}, {"sp", 9}, {"cl", 9}, {"br", 9}, {"fr", 9}, {"cr", 8}, {"str", 7}, {"th", 6},
	{"bl", 5}, {"fl", 5}, {"pl", 4}, {"sc", 4}, {"sl", 4}, {"dr", 4}, {"gl", 4}, {"wr", 3},
	{"sm", 3}, {"scr", 3}, {"ph", 3}, {"sk", 2}, {"sw", 2}, {"wh", 2}, {"thr", 2}, {"sn", 2},
	{"tw", 1}, {"ps", 1}, {"kn", 1}, {"spr", 1}, {"nf", 1}, {"prz", 1}, {"spl", 1},
}

// vowels are the vowel groups.
var vowels = []part{
	{"e", 400}, {"a", 270}, {"i", 249}, {"o", 184}, {"u", 84}, {"y", 37}, {"io", 19}, {"ie", 16},
	{"ea", 14}, {"ou", 11}, {"ia", 11}, {"ei", 9}, {"ai", 9}, {"ee", 8}, {"au", 7}, {"oo", 7},
	{"ue", 6}, {"ui", 5}, {"ey", 4}, {"ua", 4}, {"oa", 3}, {"oi", 3}, {"ay", 3}, {"aa", 3},
	{"oe", 3},
}

// medials are the consonant clusters between two vowel groups.
var medials = []part{
	{"t", 400}, {"r", 327}, {"l", 288}, {"n", 286}, {"m", 219}, {"d", 203}, {"c", 180},
	{"s", 175}, {"v", 139}, {"p", 117}, {"g", 116}, {"b", 96}, {"f", 78}, {"k", 66}, {"z", 60},
	{"nt", 51}, {"nd", 42}, {"w", 38}, {"st", 38}, {"ll", 35}, {"x", 34}, {"h", 26}, {"ss", 26},
	{"bl", 25}, {"nc", 23}, {"ct", 22}, {"rt", 22}, {"ng", 20}, {"tt", 19}, {"rr", 18},
	{"ch", 18}, {"rm", 17}, {"j", 17}, {"rs", 16}, {"ns", 16}, {"nf", 15}, {"ck", 14}, {"nn", 14},
	{"mp", 14}, {"lt", 13}, {"rn", 12}, {"mm", 12}, {"rd", 11}, {"th", 10}, {"tr", 10},
	{"rg", 10}, {"pt", 10}, {"pp", 10}, {"pr", 9}, {"rc", 9}, {"rl", 8}, {"sp", 8}, {"sc", 8},
	{"ff", 8}, {"mb", 8}, {"rv", 8}, {"gr", 8}, {"sh", 8}, {"mpl", 8}, {"gn", 8}, {"str", 8},
	{"ntr", 7}, {"cc", 7}, {"nv", 7}, {"nst", 7}, {"pl", 7}, {"nl", 6}, {"ld", 6}, {"rk", 6},
	{"nk", 6}, {"rb", 6}, {"br", 5}, {"gg", 5}, {"tl", 5}, {"cl", 5}, {"sl", 4}, {"dd", 4},
	{"ph", 4}, {"mpr", 4}, {"nh", 4}, {"lv", 4}, {"nr", 4}, {"cr", 4}, {"rch", 4}, {"kt", 4},
	{"bs", 4}, {"dr", 4}, {"nb", 4}, {"lm", 4}, {"nz", 4}, {"dl", 4}, {"ndr", 3}, {"rf", 3},
	{"nm", 3}, {"np", 3}, {"ts", 3}, {"gl", 3}, {"ls", 3}, {"rw", 3}, {"tch", 3}, {"bj", 3},
	{"rp", 3}, {"ngl", 3}, {"sk", 3}, {"ndl", 3}, {"scr", 3}, {"dm", 3}, {"tm", 3}, {"lg", 3},
	{"sch", 3}, {"ln", 3}, {"fl", 2}, {"tp", 2}, {"tn", 2}, {"ncl", 2}, {"ps", 2}, {"tc", 2},
	{"dg", 2}, {"nstr", 2}, {"lk", 2}, {"fr", 2}, {"bb", 2}, {"rh", 2}, {"lc", 2}, {"sm", 2},
	{"lb", 2}, {"rz", 2}, {"tf", 2}, {"ft", 2}, {"td", 2}, {"nch", 2}, {"ml", 2}, {"ppl", 2},
	{"nj", 2}, {"sn", 2}, {"pd", 2}, {"ntl", 2}, {"lf", 2}, {"nct", 2}, {"rst", 2}, {"gm", 2},
	{"cht", 2}, {"tw", 2}, {"lh", 2}, {"nw", 2}, {"kk", 2}, {"bd", 2}, {"bt", 2}, {"dn", 2},
	{"dv", 2},
}

// finals are the consonant clusters that end a word ("" ends it with a vowel).
var finals = []part{
	{"", 400}, {"n", 115}, {"r", 97}, {"s", 87}, {"d", 63}, {"ng", 51}, {"t", 41}, {"l", 35},
	{"nt", 24}, {"m", 20}, {"c", 17}, {"p", 17}, {"rs", 16}, {"ns", 15}, {"st", 13}, {"v", 11},
	{"k", 11}, {"g", 11}, {"x", 10}, {"rt", 10}, {"nd", 10}, {"ss", 8}, {"ck", 8}, {"ll", 8},
	{"f", 8}, {"b", 7}, {"ts", 7}, {"rd", 6}, {"ls", 6}, {"th", 6}, {"ct", 6}, {"w", 5},
	{"ch", 5}, {"nts", 5}, {"sh", 5}, {"ps", 4}, {"ld", 4}, {"pt", 4}, {"z", 4}, {"nc", 3},
	{"ff", 3}, {"ms", 3}, {"nk", 3}, {"gs", 3}, {"ngs", 3}, {"rg", 3}, {"mp", 3}, {"rm", 3},
	{"lt", 3}, {"nn", 3}, {"cs", 2}, {"ds", 2}, {"rn", 2}, {"tch", 2}, {"tt", 2}, {"sts", 2},
	{"rk", 2}, {"nds", 2}, {"h", 2}, {"sk", 2}, {"ght", 2}, {"cks", 2}, {"cts", 2}, {"fs", 2},
	{"bs", 1}, {"ft", 1}, {"rts", 1}, {"rch", 1}, {"gn", 1}, {"gt", 1},
}

// labelRand is the keyed stream a chunk's shape is drawn from: the
// blocks HMAC-SHA256(nameKey, "name" || u64(p) || u32(i) || u32(k)) for
// k = 0, 1, ...
type labelRand struct {
	mac  hash.Hash
	seed []byte
	k    uint32
	buf  []byte
}

func newLabelRand(nameKey []byte, p int64, i int) *labelRand {
	seed := append([]byte("name"), binary.BigEndian.AppendUint64(nil, uint64(p))...)
	seed = binary.BigEndian.AppendUint32(seed, uint32(i))
	return &labelRand{mac: hmac.New(sha256.New, nameKey), seed: seed}
}

func (r *labelRand) byte() byte {
	if len(r.buf) == 0 {
		r.mac.Reset()
		r.mac.Write(r.seed)
		r.mac.Write(binary.BigEndian.AppendUint32(nil, r.k))
		r.buf = r.mac.Sum(nil)
		r.k++
	}
	b := r.buf[0]
	r.buf = r.buf[1:]
	return b
}

// intn returns a number below n (at most 65536), from two bytes.
func (r *labelRand) intn(n int) int {
	return (int(r.byte())<<8 | int(r.byte())) % n
}

// pick returns one of ps with probability proportional to its weight,
// leaving out the ones that start with y when noY is set.
func (r *labelRand) pick(ps []part, noY bool) string {
	skip := func(p part) bool { return noY && p.s != "" && p.s[0] == 'y' }
	total := 0
	for _, p := range ps {
		if !skip(p) {
			total += p.w
		}
	}
	v := r.intn(total)
	for _, p := range ps {
		if skip(p) {
			continue
		}
		if v < p.w {
			return p.s
		}
		v -= p.w
	}
	return ps[0].s // not reached: v < total
}

// label draws a chunk label: a word of 5 to 16 letters; or, one time in
// sixteen each, a shorter word and one or two digits, or two words joined
// by a hyphen, as host names often are.
func (r *labelRand) label() string {
	n := 5
	for v := r.intn(sum(labelLengths[:])); v >= labelLengths[n-5]; n++ {
		v -= labelLengths[n-5]
	}
	switch form := r.byte(); {
	case form < 8:
		return r.word(n-1, 4, 15) + string(rune('2'+r.byte()%8))
	case form < 16:
		d := 10 + r.byte()%90
		return r.word(n-2, 4, 14) + string(rune('0'+d/10)) + string(rune('0'+d%10))
	case form < 32 && n >= 8:
		a := 3 + r.intn(n-6)
		first := r.word(a, 3, min(a+1, 12))
		return first + "-" + r.word(n-1-len(first), 3, 15-len(first))
	}
	return r.word(n, 5, 16)
}

func sum(ws []int) int {
	t := 0
	for _, w := range ws {
		t += w
	}
	return t
}

// word draws a word of n-1 to n+1 letters, and within [lo, hi]: an
// initial cluster, then vowel groups and medial clusters in turn, then a
// final cluster.
func (r *labelRand) word(n, lo, hi int) string {
	n = max(lo, min(hi, n))
	b := make([]byte, 0, 24)
	for range 64 {
		b = append(b[:0], r.pick(initials, false)...)
		for {
			b = append(b, r.pick(vowels, len(b) == 0)...)
			if len(b) >= n-2 {
				b = append(b, r.pick(finals, false)...)
				break
			}
			b = append(b, r.pick(medials, false)...)
		}
		if len(b) >= max(lo, n-1) && len(b) <= min(hi, n+1) {
			return string(b)
		}
	}
	// Not reached in practice (each try fits with probability above
	// 1/2): single consonants and vowels in turn, n letters.
	b = b[:0]
	for len(b) < n {
		b = append(b, "tnrlsdcm"[r.byte()%8], "eaio"[r.byte()%4])
	}
	return string(b[:n])
}
