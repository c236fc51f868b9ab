package relaylist

import (
	"bytes"
	"crypto/ed25519"
	"errors"
	"fmt"
	"reflect"
	"testing"
	"time"
)

// testKey is a fixed list key, so fuzz seeds stay valid.
var testKey = ed25519.NewKeyFromSeed(bytes.Repeat([]byte{7}, 32))

func testEntry(i int) Entry {
	e := Entry{
		Relays:   []string{fmt.Sprintf("relay%d.example:443", i), "[2001:db8::1]:8443"},
		Carriers: []string{"tls", "quic"},
		SNI:      "www.example.com",
		Name:     fmt.Sprintf("relay %d", i),
	}
	e.Pin[0], e.Pin[31] = 1, byte(i)
	e.Key[0], e.Key[31] = 2, byte(i)
	return e
}

func testList(n int, seq uint64, exp time.Time) *List {
	l := &List{Seq: seq, Expires: exp.Truncate(time.Second).UTC()}
	for i := range n {
		l.Entries = append(l.Entries, testEntry(i))
	}
	return l
}

var now = time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)

func TestRoundTrip(t *testing.T) {
	for _, n := range []int{1, 2, 50} {
		l := testList(n, uint64(n)*1000, now.Add(time.Hour))
		l.Entries[0].Carriers = nil // all carriers
		l.Entries[0].Name = ""
		data, err := Sign(l, testKey)
		if err != nil {
			t.Fatal(err)
		}
		got, err := Decode(data, Verify{Key: testKey.Public().(ed25519.PublicKey), Now: now, MinSeq: l.Seq})
		if err != nil {
			t.Fatalf("n=%d: %v", n, err)
		}
		if !reflect.DeepEqual(got, l) {
			t.Errorf("n=%d: round trip\n got %+v\nwant %+v", n, got, l)
		}
		again, _ := Sign(got, testKey)
		if !bytes.Equal(again, data) {
			t.Errorf("n=%d: encoding is not canonical", n)
		}
	}
}

func TestLinkConversion(t *testing.T) {
	e := testEntry(3)
	if got := FromLink(e.Link()); !reflect.DeepEqual(got, e) {
		t.Errorf("FromLink(Link()) = %+v, want %+v", got, e)
	}
}

func TestDecodeErrors(t *testing.T) {
	pub := testKey.Public().(ed25519.PublicKey)
	good, err := Sign(testList(3, 10, now.Add(time.Hour)), testKey)
	if err != nil {
		t.Fatal(err)
	}
	expired, _ := Sign(testList(3, 11, now.Add(-time.Second)), testKey)
	other := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{8}, 32))
	forged, _ := Sign(testList(3, 99, now.Add(time.Hour)), other)
	flipped := bytes.Clone(good)
	flipped[11] ^= 1 // the sequence number
	for _, tt := range []struct {
		name string
		data []byte
		v    Verify
		want error
	}{
		{"good", good, Verify{Key: pub, Now: now}, nil},
		{"same seq", good, Verify{Key: pub, Now: now, MinSeq: 10}, nil},
		{"rollback", good, Verify{Key: pub, Now: now, MinSeq: 11}, ErrRollback},
		{"expired", expired, Verify{Key: pub, Now: now}, ErrExpired},
		{"expired unchecked", expired, Verify{Key: pub}, nil},
		{"forged", forged, Verify{Key: pub, Now: now}, ErrSignature},
		{"altered", flipped, Verify{Key: pub, Now: now}, ErrSignature},
		{"no key", good, Verify{Now: now}, ErrSignature},
		{"truncated", good[:len(good)-1], Verify{Key: pub, Now: now}, ErrMalformed},
		{"truncated half", good[:len(good)/2], Verify{Key: pub, Now: now}, ErrMalformed},
		{"trailing", append(bytes.Clone(good), 0), Verify{Key: pub, Now: now}, ErrMalformed},
		{"empty", nil, Verify{Key: pub, Now: now}, ErrMalformed},
		{"magic", append([]byte("XRL1"), good[4:]...), Verify{Key: pub, Now: now}, ErrMalformed},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Decode(tt.data, tt.v)
			if !errors.Is(err, tt.want) || (tt.want == nil) != (err == nil) {
				t.Errorf("Decode: %v, want %v", err, tt.want)
			}
		})
	}
}

func TestSignRejects(t *testing.T) {
	for _, tt := range []struct {
		name string
		l    *List
	}{
		{"empty", &List{Expires: now}},
		{"bad entry", &List{Entries: []Entry{{Relays: []string{"x"}}}}},
		{"long name", func() *List {
			l := testList(1, 1, now)
			l.Entries[0].Relays = []string{string(bytes.Repeat([]byte("a"), 300)) + ".example:443"}
			return l
		}()},
	} {
		if _, err := Sign(tt.l, testKey); err == nil {
			t.Errorf("%s: Sign succeeded", tt.name)
		}
	}
}

func TestKeyFile(t *testing.T) {
	pemBytes, err := MarshalPrivateKey(testKey)
	if err != nil {
		t.Fatal(err)
	}
	k, err := ParsePrivateKey(pemBytes)
	if err != nil {
		t.Fatal(err)
	}
	if !k.Equal(testKey) {
		t.Error("key changed in round trip")
	}
	if _, err := ParsePrivateKey([]byte("nope")); err == nil {
		t.Error("ParsePrivateKey accepted garbage")
	}
}

func FuzzDecode(f *testing.F) {
	pub := testKey.Public().(ed25519.PublicKey)
	good, err := Sign(testList(2, 5, now.Add(time.Hour)), testKey)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add(good[:40])
	f.Add([]byte(Magic))
	f.Fuzz(func(t *testing.T, data []byte) {
		l, err := ParseUnverified(data)
		if err != nil {
			if l != nil {
				t.Fatal("list returned with error")
			}
			return
		}
		// A list that parses re-encodes to the same bytes.
		body, err := l.marshal()
		if err != nil {
			t.Fatalf("parsed list does not encode: %v", err)
		}
		if !bytes.Equal(body, data[:len(data)-ed25519.SignatureSize]) {
			t.Fatal("encoding is not canonical")
		}
		if _, err := Decode(data, Verify{Key: pub, Now: now}); err != nil && !errors.Is(err, ErrSignature) && !errors.Is(err, ErrExpired) {
			t.Fatalf("Decode: %v", err)
		}
	})
}
