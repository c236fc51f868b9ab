package transport

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

func TestOpenRequestRoundTrip(t *testing.T) {
	tests := []OpenRequest{
		{Target: DCTarget(2)},
		{Target: DCTarget(-4), Padding: 17},
		{Target: DCTarget(10003)},
		{Target: AddrTarget("149.154.167.51", 443)},
		{Target: AddrTarget("2001:67c:4e8:f002::a", 443), Padding: MaxPadding},
		{Target: AddrTarget("localhost", 8080)},
		{Target: AddrTarget("::ffff:127.0.0.1", 80)},
	}
	for _, want := range tests {
		var buf bytes.Buffer
		if _, err := want.WriteTo(&buf); err != nil {
			t.Fatalf("%v: write: %v", want.Target, err)
		}
		buf.WriteString("trailing")
		got, err := ReadOpenRequest(&buf)
		if err != nil {
			t.Fatalf("%v: read: %v", want.Target, err)
		}
		if want.Target.Host == "::ffff:127.0.0.1" {
			want.Target.Host = "127.0.0.1" // mapped addresses travel as IPv4
		}
		if got != want {
			t.Errorf("got %+v, want %+v", got, want)
		}
		if rest, _ := io.ReadAll(&buf); string(rest) != "trailing" {
			t.Errorf("%v: read consumed bytes past the message: rest %q", want.Target, rest)
		}
	}
}

func TestOpenRequestErrors(t *testing.T) {
	bad := []OpenRequest{
		{Target: AddrTarget("example.org", 0)},
		{Target: AddrTarget("", 443)},
		{Target: AddrTarget("bad host", 443)},
		{Target: DCTarget(2), Padding: MaxPadding + 1},
	}
	for _, r := range bad {
		if _, err := r.AppendBinary(nil); err == nil {
			t.Errorf("%+v: encoded without error", r)
		}
	}
	wire := []struct {
		name string
		in   []byte
		want error
	}{
		{"version", []byte{2, kindDC, 0, 0, 0, 2, 0, 0}, ErrVersion},
		{"kind", []byte{1, 9, 0, 0, 0, 2, 0, 0}, ErrTarget},
		{"dc zero", []byte{1, kindDC, 0, 0, 0, 0, 0, 0}, ErrTarget},
		{"port zero", []byte{1, kindIPv4, 1, 2, 3, 4, 0, 0, 0, 0}, ErrTarget},
		{"empty domain", []byte{1, kindDomain, 0, 0, 80, 0, 0}, ErrTarget},
		{"padding", []byte{1, kindDC, 0, 0, 0, 2, 0xff, 0xff}, ErrPadding},
		{"short", []byte{1, kindIPv6, 1, 2}, io.ErrUnexpectedEOF},
		{"empty", nil, io.EOF},
	}
	for _, tt := range wire {
		_, err := ReadOpenRequest(bytes.NewReader(tt.in))
		if !errors.Is(err, tt.want) {
			t.Errorf("%s: got %v, want %v", tt.name, err, tt.want)
		}
	}
}

func TestOpenReply(t *testing.T) {
	for _, st := range []Status{StatusOK, StatusNotAllowed, StatusQuota, Status(99)} {
		var buf bytes.Buffer
		if _, err := (OpenReply{Status: st, Padding: 5}).WriteTo(&buf); err != nil {
			t.Fatal(err)
		}
		rep, err := ReadOpenReply(&buf)
		if rep.Status != st || rep.Padding != 5 {
			t.Errorf("got %+v, want status %v", rep, st)
		}
		var se *StatusError
		if st == StatusOK && err != nil || st != StatusOK && (!errors.As(err, &se) || se.Status != st) {
			t.Errorf("status %v: err %v", st, err)
		}
	}
	if _, err := ReadOpenReply(bytes.NewReader([]byte{7, 0, 0, 0})); !errors.Is(err, ErrVersion) {
		t.Errorf("bad version: %v", err)
	}
}

func FuzzReadOpenRequest(f *testing.F) {
	for _, r := range []OpenRequest{
		{Target: DCTarget(2), Padding: 3},
		{Target: AddrTarget("1.2.3.4", 443)},
		{Target: AddrTarget("::1", 443)},
		{Target: AddrTarget("example.org", 80)},
	} {
		b, _ := r.AppendBinary(nil)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		req, err := ReadOpenRequest(bytes.NewReader(in))
		if err != nil {
			return
		}
		// Whatever decodes must encode again and decode to the same value.
		b, err := req.AppendBinary(nil)
		if err != nil {
			t.Fatalf("decoded %+v does not encode: %v", req, err)
		}
		again, err := ReadOpenRequest(bytes.NewReader(b))
		if err != nil || again != req {
			t.Fatalf("round trip: %+v -> %+v, %v", req, again, err)
		}
	})
}

func FuzzReadOpenReply(f *testing.F) {
	f.Add([]byte{1, 0, 0, 0})
	f.Add([]byte{1, 2, 0, 3, 0, 0, 0})
	f.Fuzz(func(t *testing.T, in []byte) {
		_, _ = ReadOpenReply(bytes.NewReader(in))
	})
}
