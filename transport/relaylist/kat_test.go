package relaylist

import (
	"bytes"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/chacha20poly1305"
)

// TestSealKnownAnswer seals a fixed list with a fixed bootstrap key for a
// fixed day and checks every chunk against the construction of the
// package documentation, computed here from the primitives (HKDF-SHA256,
// HMAC-SHA256, XChaCha20-Poly1305) rather than with the package's
// helpers, and pins the first bytes of chunk 0 and the first labels.
func TestSealKnownAnswer(t *testing.T) {
	bk := bytes.Repeat([]byte{1}, 32) // testAudience(1)'s key
	p := PeriodOf(now)
	list, err := Sign(testList(9, 7, now.Add(time.Hour)), testKey)
	if err != nil {
		t.Fatal(err)
	}
	u64 := func(v int64) []byte { return binary.BigEndian.AppendUint64(nil, uint64(v)) }
	hmacOf := func(key []byte, parts ...[]byte) []byte {
		m := hmac.New(sha256.New, key)
		for _, b := range parts {
			m.Write(b)
		}
		return m.Sum(nil)
	}
	const salt = "merpati bootstrap v1"
	nameKey, err := hkdf.Key(sha256.New, bk, []byte(salt), "name", 32)
	if err != nil {
		t.Fatal(err)
	}
	sealKey, err := hkdf.Key(sha256.New, bk, []byte(salt), "seal"+string(u64(p)), 32)
	if err != nil {
		t.Fatal(err)
	}
	size := func(i int) int {
		block := hmacOf(nameKey, []byte("name"), u64(p), binary.BigEndian.AppendUint32(nil, uint32(i)), []byte{0, 0, 0, 0})
		return []int{204, 246, 276, 306}[block[0]%4]
	}
	// n: the smallest count of the form 2^k or 3·2^k whose chunks hold
	// mask, nonce, tag, length and list.
	n, total := 0, 0
	for c := 1; ; c++ {
		total += size(c - 1)
		if valid := c&(c-1) == 0 || (c%3 == 0 && (c/3)&(c/3-1) == 0); valid && total >= 2+24+16+4+len(list) {
			n = c
			break
		}
	}
	mask := hmacOf(nameKey, []byte("count"), u64(p))[:2]
	nonce := hmacOf(sealKey, []byte("nonce"), list)[:24]
	pt := make([]byte, total-2-24-16)
	binary.BigEndian.PutUint32(pt, uint32(len(list)))
	copy(pt[4:], list)
	ad := binary.BigEndian.AppendUint16(append([]byte(salt), u64(p)...), uint16(n))
	aead, err := chacha20poly1305.NewX(sealKey)
	if err != nil {
		t.Fatal(err)
	}
	stream := []byte{byte(n>>8) ^ mask[0], byte(n) ^ mask[1]}
	stream = append(stream, nonce...)
	stream = aead.Seal(stream, nonce, pt, ad)

	a := testAudience(1)
	if got, err := a.Chunks(p, len(list)); err != nil || got != n {
		t.Fatalf("Chunks = %d, %v; want %d", got, err, n)
	}
	chunks, err := a.Seal(p, list, n)
	if err != nil {
		t.Fatal(err)
	}
	off := 0
	for i, c := range chunks {
		if want := stream[off : off+size(i)]; !bytes.Equal(c, want) {
			t.Errorf("chunk %d:\n got %x\nwant %x", i, c, want)
		}
		off += size(i)
	}
	// Pins, so that the construction above cannot drift together with
	// the code.
	const chunk0Prefix = "c3a2e0b27ed92b7919ba662d134dcd15"
	if got := hex.EncodeToString(chunks[0][:16]); got != chunk0Prefix {
		t.Errorf("chunk 0 starts %s, want %s", got, chunk0Prefix)
	}
	var labels []string
	for i := range 6 {
		labels = append(labels, a.Label(p, i))
	}
	const wantLabels = "emutaanpan medinices direrane deniotemloundik ceruralarincak reraunaveps3"
	if got := strings.Join(labels, " "); got != wantLabels {
		t.Errorf("labels %q, want %q", got, wantLabels)
	}
	t.Logf("period %d, %d-byte list in %d chunks, labels %s", p, len(list), n, strings.Join(labels, " "))
}

// TestOpenWithAnotherSecret: chunks opened with a key derived from
// another secret fail, even when everything else (names, sizes, chunk
// count) is right: the sealing key depends on the secret itself, not on
// anything public or on the name key alone.
func TestOpenWithAnotherSecret(t *testing.T) {
	a := testAudience(1)
	p := PeriodOf(now)
	data, err := Sign(testList(12, 1, now.Add(time.Hour)), testKey)
	if err != nil {
		t.Fatal(err)
	}
	chunks := seal(t, a, p, data)
	n := len(chunks)
	// An audience with a's names but another secret: the chunk count
	// unmasks right, and only the AEAD stands in the way.
	other := &Audience{secret: testAudience(2).secret, nameKey: a.nameKey}
	if got, err := other.Count(p, chunks[0]); err != nil || got != n {
		t.Fatalf("Count with a's name key = %d, %v; want %d", got, err, n)
	}
	if a.ID() != other.ID() {
		t.Fatal("IDs differ: the test needs an audience that shares a's public ID")
	}
	if _, err := other.Open(p, chunks); !errors.Is(err, ErrSealed) {
		t.Fatalf("opened with another secret's key: %v", err)
	}
	if _, err := a.Open(p, chunks); err != nil {
		t.Fatalf("Open with the right key: %v", err)
	}
}

// TestLabelsLookLikeWords derives 2,000 labels (250 audiences, 8 chunks
// each) and checks that they are not one recognisable pattern: few match
// the pattern of the old syllable labels (consonant-vowel pairs, 10 to 14
// letters; about 1% of English words of those lengths do), lengths spread
// over 5 to 16, some carry digits or a hyphen, and a pattern fitted to
// the generator's tables matches many common English words too.
func TestLabelsLookLikeWords(t *testing.T) {
	old := regexp.MustCompile(`^([bcdfghjklmnpqrstvwxyz][aeiou]){5,7}$`)
	valid := regexp.MustCompile(`^[a-z]{3,}(-[a-z]{3,})?[0-9]{0,2}$`)
	lengths := map[int]int{}
	var matchOld, digits, hyphens int
	const total = 2000
	for k := range total / 8 {
		a := NewAudience([32]byte{byte(k), byte(k >> 8), 0x5a})
		for i := range 8 {
			l := a.Label(20000+int64(k), i)
			if !valid.MatchString(l) || len(l) < 5 || len(l) > 16 {
				t.Fatalf("label %q", l)
			}
			lengths[len(l)]++
			if old.MatchString(l) {
				matchOld++
			}
			if strings.ContainsAny(l, "0123456789") {
				digits++
			}
			if strings.Contains(l, "-") {
				hyphens++
			}
		}
	}
	t.Logf("%d labels: %d match the old pattern, %d with digits, %d with a hyphen; lengths %v", total, matchOld, digits, hyphens, lengths)
	if matchOld > total*4/100 {
		t.Errorf("%d of %d labels match the old syllable pattern", matchOld, total)
	}
	if len(lengths) < 12 || lengths[5] == 0 || lengths[16] == 0 {
		t.Errorf("lengths %v, want all of 5 to 16", lengths)
	}
	for _, l := range lengths {
		if l > total/5 {
			t.Errorf("lengths %v: one length is a fifth of all", lengths)
		}
	}
	if digits < total/50 || hyphens < total/50 || digits > total/5 || hyphens > total/5 {
		t.Errorf("%d labels with digits, %d with a hyphen, of %d", digits, hyphens, total)
	}

	// The pattern of the generator itself: what a censor who read this
	// code would match. Common English words match it too.
	alt := func(ps []part) string {
		var s []string
		for _, p := range ps {
			if p.s != "" {
				s = append(s, p.s)
			}
		}
		return "(?:" + strings.Join(s, "|") + ")"
	}
	w := fmt.Sprintf("%s?%s(?:%s%s)*%s?", alt(initials), alt(vowels), alt(medials), alt(vowels), alt(finals))
	fitted := regexp.MustCompile(fmt.Sprintf(`^(?:%s[0-9]{0,2}|%s-%s)$`, w, w, w))
	english := strings.Fields(`about above accept account across action active actually address advance
		against agency almost already although always amount analysis animal another answer anything
		appear apply approach around arrive article artist assume attack attention audience author
		available balance barrier battle beautiful because become before begin behavior behind believe
		benefit between beyond billion brother budget building business camera campaign cancer candidate
		capital career center central century certain chair challenge chance change character charge
		check child choice church citizen civil claim class clear close coach collection college color
		commercial common community company compare computer concern condition conference congress
		consider consumer contain continue control could country couple course court cover create
		crime cultural culture current customer daughter debate decade decide decision defense degree
		democrat describe design despite detail determine develop difference difficult dinner direction
		director discover discuss disease doctor document dream drive during early economic economy
		education effect effort eight either election else employee energy enjoy enough enter entire
		environment especially establish evening event every evidence exactly example executive exist
		expect experience expert explain family father feeling field figure final finally financial
		finger finish follow foreign forget former forward friend front function future garden general
		generation government great ground group growth guess happen health heart heavy history hospital
		hotel house however human hundred husband identify image imagine impact important improve include
		increase indeed indicate individual industry information inside instead institution interest
		interview investment itself journey kitchen knowledge language large later laugh lawyer leader
		learn least leave legal letter level light likely listen little local machine magazine maintain
		major manage management manager market marriage material matter maybe measure media medical meeting
		member memory mention message method middle military million minute mission model modern moment
		money month morning mother movement music myself nation national natural nature nearly necessary
		network never news newspaper night nothing notice number occur offer office officer official often
		operation opportunity option order organization other outside owner painting paper parent partner
		party patient pattern peace people perform perhaps period person personal phone physical picture
		piece place plant player point police policy political politics popular population position
		positive possible power practice prepare present president pressure pretty prevent price private
		probably problem process produce product production professional professor program project
		property protect prove provide public purpose quality question quickly quite radio range rather
		reach ready reality realize really reason receive recent record reduce reflect region relate
		relationship religious remain remember remove report represent republican require research
		resource respond response result return reveal rich right rise risk road rock role room rule
		safe same save scene school science scientist score season seat second section security seek
		seem sell send senior sense series serious serve service seven several shake share shoot short
		should shoulder simple simply since single sister situation skill small smile social society
		soldier somebody someone something sometimes sound source south southern space speak special
		specific speech spend sport spring staff stage stand standard start state statement station stay
		step still stock stop store story strategy street strong structure student study stuff style
		subject success successful suddenly suffer suggest summer support sure surface system table
		teacher team technology television tell tend term test thank their themselves theory there these
		they thing think third those though thought thousand threat three through throughout throw thus
		today together tonight total tough toward town trade traditional training travel treat treatment
		tree trial trip trouble true truth try turn type under understand unit until upon usually value
		various very victim view violence visit voice vote wait walk wall want watch water weapon wear
		week weight well west western what whatever wheel when where whether which while white whole whom
		whose wide wife will window wish with within without woman wonder word work worker world worry
		would write writer wrong yard yeah year young yourself`)
	var n, match int
	for _, e := range english {
		if len(e) < 5 || len(e) > 16 {
			continue
		}
		n++
		if fitted.MatchString(e) {
			match++
		}
	}
	t.Logf("the generator's own pattern matches %d of %d common English words of 5 to 16 letters", match, n)
	if match*3 < n {
		t.Errorf("the generator's pattern matches only %d of %d English words: a pattern could pick labels out", match, n)
	}
}
