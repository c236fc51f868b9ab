package hello

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"slices"
	"testing"
)

// ext is one extension for buildRecord.
type ext struct {
	typ  uint16
	body []byte
}

// helloSpec describes a ClientHello for buildRecord.
type helloSpec struct {
	sessionID []byte
	ciphers   []uint16
	comp      []byte // nil means {0}
	exts      []ext  // nil means no extensions block
}

// buildRecord encodes s as a handshake record.
func buildRecord(s helloSpec) []byte {
	var body []byte
	body = binary.BigEndian.AppendUint16(body, 0x0303)
	body = append(body, bytes.Repeat([]byte{0x42}, 32)...)
	body = append(body, byte(len(s.sessionID)))
	body = append(body, s.sessionID...)
	body = binary.BigEndian.AppendUint16(body, uint16(2*len(s.ciphers)))
	for _, c := range s.ciphers {
		body = binary.BigEndian.AppendUint16(body, c)
	}
	comp := s.comp
	if comp == nil {
		comp = []byte{0}
	}
	body = append(body, byte(len(comp)))
	body = append(body, comp...)
	if s.exts != nil {
		var exts []byte
		for _, e := range s.exts {
			exts = binary.BigEndian.AppendUint16(exts, e.typ)
			exts = binary.BigEndian.AppendUint16(exts, uint16(len(e.body)))
			exts = append(exts, e.body...)
		}
		body = binary.BigEndian.AppendUint16(body, uint16(len(exts)))
		body = append(body, exts...)
	}
	msg := append([]byte{1, byte(len(body) >> 16), byte(len(body) >> 8), byte(len(body))}, body...)
	rec := []byte{22, 3, 1, byte(len(msg) >> 8), byte(len(msg))}
	return append(rec, msg...)
}

// u16list encodes v with a 16-bit (or, if short8, 8-bit) length prefix.
func u16list(short8 bool, v ...uint16) []byte {
	var b []byte
	if short8 {
		b = append(b, byte(2*len(v)))
	} else {
		b = binary.BigEndian.AppendUint16(b, uint16(2*len(v)))
	}
	for _, x := range v {
		b = binary.BigEndian.AppendUint16(b, x)
	}
	return b
}

func sniBody(name string) []byte {
	b := binary.BigEndian.AppendUint16(nil, uint16(len(name)+3))
	b = append(b, 0)
	b = binary.BigEndian.AppendUint16(b, uint16(len(name)))
	return append(b, name...)
}

func alpnBody(protos ...string) []byte {
	var l []byte
	for _, p := range protos {
		l = append(l, byte(len(p)))
		l = append(l, p...)
	}
	return append(binary.BigEndian.AppendUint16(nil, uint16(len(l))), l...)
}

func keyShareBody(groups ...uint16) []byte {
	var l []byte
	for _, g := range groups {
		l = binary.BigEndian.AppendUint16(l, g)
		l = binary.BigEndian.AppendUint16(l, 1)
		l = append(l, 0)
	}
	return append(binary.BigEndian.AppendUint16(nil, uint16(len(l))), l...)
}

// chromeLike is a hello shaped like Chrome 131's, in the wire order FoxIO
// uses for its JA4 test vector.
func chromeLike() helloSpec {
	exts := []ext{{typ: 0x0a0a}}
	for _, t := range []uint16{0x001b, 0x0000, 0x0033, 0x0010, 0x4469, 0x0017, 0x002d, 0x000d, 0x0005, 0x0023, 0x0012, 0x002b, 0xff01, 0x000b, 0x000a, 0x0015} {
		var body []byte
		switch t {
		case ExtServerName:
			body = sniBody("example.com")
		case ExtALPN:
			body = alpnBody("h2", "http/1.1")
		case ExtKeyShare:
			body = keyShareBody(0x2a2a, 0x11ec, 0x001d)
		case ExtSignatureAlgorithms:
			body = u16list(false, 0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601)
		case ExtSupportedVersions:
			body = u16list(true, 0x3a3a, 0x0304, 0x0303)
		case ExtSupportedGroups:
			body = u16list(false, 0x2a2a, 0x11ec, 0x001d, 0x0017, 0x0018)
		}
		exts = append(exts, ext{t, body})
	}
	exts = append(exts, ext{0x1a1a, []byte{0}})
	return helloSpec{
		sessionID: bytes.Repeat([]byte{7}, 32),
		ciphers:   []uint16{0x5a5a, 0x1301, 0x1302, 0x1303, 0xc02b, 0xc02f, 0xc02c, 0xc030, 0xcca9, 0xcca8, 0xc013, 0xc014, 0x009c, 0x009d, 0x002f, 0x0035},
		exts:      exts,
	}
}

func TestParseFields(t *testing.T) {
	rec := buildRecord(chromeLike())
	h, err := Parse(rec)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(h.Raw, rec[5:]) {
		t.Error("Raw is not the handshake message")
	}
	if h.Version != 0x0303 || len(h.Random) != 32 || h.Random[0] != 0x42 {
		t.Errorf("version %#x random %x", h.Version, h.Random)
	}
	if h.SessionIDOffset != 39 || !bytes.Equal(h.Raw[39:39+32], h.SessionID) || h.SessionID[0] != 7 {
		t.Errorf("session id offset %d, id %x", h.SessionIDOffset, h.SessionID)
	}
	if h.ServerName != "example.com" {
		t.Errorf("ServerName = %q", h.ServerName)
	}
	checks := []struct {
		name      string
		got, want []uint16
	}{
		{"CipherSuites", h.CipherSuites, chromeLike().ciphers},
		{"SupportedVersions", h.SupportedVersions, []uint16{0x3a3a, 0x0304, 0x0303}},
		{"SupportedGroups", h.SupportedGroups, []uint16{0x2a2a, 0x11ec, 0x001d, 0x0017, 0x0018}},
		{"KeyShareGroups", h.KeyShareGroups, []uint16{0x2a2a, 0x11ec, 0x001d}},
		{"SignatureAlgorithms", h.SignatureAlgorithms, []uint16{0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601}},
	}
	for _, c := range checks {
		if !slices.Equal(c.got, c.want) {
			t.Errorf("%s = %x, want %x", c.name, c.got, c.want)
		}
	}
	if !slices.Equal(h.ALPN, []string{"h2", "http/1.1"}) {
		t.Errorf("ALPN = %q", h.ALPN)
	}
	if len(h.Extensions) != 18 || h.Extensions[0] != 0x0a0a || h.Extensions[17] != 0x1a1a {
		t.Errorf("Extensions = %x", h.Extensions)
	}
	// Made to size: a relay parses a hello per connection.
	if cap(h.Extensions) != 18 || cap(h.extData) != 18 {
		t.Errorf("extension slices of capacity %d and %d for 18 extensions", cap(h.Extensions), cap(h.extData))
	}
	if d, ok := h.ExtensionData(0x1a1a); !ok || !bytes.Equal(d, []byte{0}) {
		t.Errorf("ExtensionData(0x1a1a) = %x, %v", d, ok)
	}
	if _, ok := h.ExtensionData(0x0039); ok {
		t.Error("ExtensionData reports an absent extension")
	}
	// The result must not share memory with the input.
	rec[5+39] ^= 0xff
	if h.SessionID[0] != 7 {
		t.Error("Parse kept a reference to its input")
	}
}

func TestParseNoExtensions(t *testing.T) {
	h, err := Parse(buildRecord(helloSpec{ciphers: []uint16{0x002f}}))
	if err != nil {
		t.Fatal(err)
	}
	if h.Extensions != nil || len(h.SessionID) != 0 || h.SessionIDOffset != 39 {
		t.Errorf("got %+v", h)
	}
}

func TestParseErrors(t *testing.T) {
	good := buildRecord(chromeLike())
	with := func(f func(s *helloSpec)) []byte {
		s := chromeLike()
		f(&s)
		return buildRecord(s)
	}
	setExt := func(typ uint16, body []byte) func(s *helloSpec) {
		return func(s *helloSpec) {
			for i := range s.exts {
				if s.exts[i].typ == typ {
					s.exts[i].body = body
				}
			}
		}
	}
	patch := func(b []byte, off int, v ...byte) []byte {
		b = bytes.Clone(b)
		copy(b[off:], v)
		return b
	}
	tests := []struct {
		name string
		in   []byte
		want error
	}{
		{"empty", nil, ErrTruncated},
		{"short header", []byte{22, 3, 1}, ErrTruncated},
		{"http", []byte("GET / HTTP/1.1\r\n\r\n"), ErrNotHandshake},
		{"alert record", patch(good, 0, 21), ErrNotHandshake},
		{"sslv2-ish version", patch(good, 1, 2), ErrNotHandshake},
		{"short payload", good[:len(good)-1], ErrTruncated},
		{"trailing bytes", append(bytes.Clone(good), 0), ErrMalformed},
		{"server hello", patch(good, 5, 2), ErrNotClientHello},
		{"empty record", []byte{22, 3, 1, 0, 0}, ErrFragmented},
		{"message longer than record", patch(good, 6, 0, 0xff, 0xff), ErrFragmented},
		{"message shorter than record", patch(good, 8, good[8]-1), ErrMalformed},
		{"session id 33", with(func(s *helloSpec) { s.sessionID = make([]byte, 33) }), ErrMalformed},
		{"no ciphers", with(func(s *helloSpec) { s.ciphers = nil }), ErrMalformed},
		{"no compression", with(func(s *helloSpec) { s.comp = []byte{} }), ErrMalformed},
		{"duplicate extension", with(func(s *helloSpec) { s.exts = append(s.exts, ext{0x0017, nil}) }), ErrMalformed},
		{"groups past body", with(setExt(ExtSupportedGroups, []byte{0, 4, 0, 0x1d})), ErrTruncated},
		{"odd groups list", with(setExt(ExtSupportedGroups, []byte{0, 3, 0, 0x1d, 0})), ErrMalformed},
		{"bytes after groups", with(setExt(ExtSupportedGroups, []byte{0, 2, 0, 0x1d, 0})), ErrMalformed},
		{"empty sni list", with(setExt(ExtServerName, []byte{0, 0})), ErrMalformed},
		{"empty host name", with(setExt(ExtServerName, sniBody(""))), ErrMalformed},
		{"empty alpn name", with(setExt(ExtALPN, alpnBody("h2", ""))), ErrMalformed},
		{"alpn name past list", with(setExt(ExtALPN, []byte{0, 2, 5, 'h'})), ErrTruncated},
		{"key share entry cut", with(setExt(ExtKeyShare, []byte{0, 3, 0, 0x1d, 0})), ErrTruncated},
		{"versions past body", with(setExt(ExtSupportedVersions, []byte{4, 3, 4})), ErrTruncated},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, err := Parse(tt.in)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Parse = %v, %v; want %v", h, err, tt.want)
			}
		})
	}
}

func TestReadRecord(t *testing.T) {
	good := buildRecord(chromeLike())
	tests := []struct {
		name    string
		in      []byte
		want    error
		wantLen int // bytes returned
	}{
		{"exact", good, nil, len(good)},
		{"stops at the record end", append(bytes.Clone(good), "next record"...), nil, len(good)},
		{"eof", nil, io.EOF, 0},
		{"short header", good[:3], ErrTruncated, 3},
		{"header only", good[:5], ErrTruncated, 5},
		{"short payload", good[:100], ErrTruncated, 100},
		{"not tls", []byte("SSH-2.0-OpenSSH_9.2\r\n"), ErrNotHandshake, 5},
		{"too large", []byte{22, 3, 1, 0x40, 0x01, 1, 2, 3}, ErrRecordTooLarge, 5},
		{"largest", append([]byte{22, 3, 3, 0x40, 0x00}, make([]byte, MaxRecordPayload)...), nil, MaxRecordLen},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ReadRecord(bytes.NewReader(tt.in))
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
			if len(got) != tt.wantLen || !bytes.Equal(got, tt.in[:len(got)]) {
				t.Fatalf("returned %d bytes, want the first %d of the input", len(got), tt.wantLen)
			}
		})
	}
	if _, err := ReadRecord(bytes.NewReader(good[:100])); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("short payload: %v does not wrap io.ErrUnexpectedEOF", err)
	}
}

func TestIsGREASE(t *testing.T) {
	n := 0
	for v := range 1 << 16 {
		if IsGREASE(uint16(v)) {
			n++
			if v&0xff != v>>8 || v&0x0f != 0x0a {
				t.Errorf("IsGREASE(%#04x)", v)
			}
		}
	}
	if n != 16 {
		t.Errorf("%d GREASE values, want 16", n)
	}
}
