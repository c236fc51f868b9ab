package dc

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"testing"

	"github.com/merpati/merpati/transport"
)

func TestResolve(t *testing.T) {
	tab := New()
	if err := tab.ParseOverrides([]string{"2=127.0.0.1:1", "2=[::1]:2", "10004=127.0.0.2:3"}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		target transport.Target
		want   []string
		err    error
	}{
		{transport.DCTarget(1), []string{"149.154.175.53:443", "[2001:b28:f23d:f001::a]:443"}, nil},
		{transport.DCTarget(2), []string{"127.0.0.1:1", "[::1]:2"}, nil},
		{transport.DCTarget(-2), []string{"127.0.0.1:1", "[::1]:2"}, nil},
		{transport.DCTarget(-4), []string{"149.154.167.91:443", "[2001:67c:4e8:f004::a]:443"}, nil},
		{transport.DCTarget(10004), []string{"127.0.0.2:3"}, nil},
		{transport.DCTarget(7), nil, ErrUnknownDC},
		{transport.AddrTarget("149.154.167.99", 443), []string{"149.154.167.99:443"}, nil},
		{transport.AddrTarget("2001:67c:4e8:f002::b", 80), []string{"[2001:67c:4e8:f002::b]:80"}, nil},
		{transport.AddrTarget("127.0.0.1", 1), []string{"127.0.0.1:1"}, nil}, // allowed by the override
		{transport.AddrTarget("::ffff:127.0.0.1", 1), []string{"127.0.0.1:1"}, nil},
		{transport.AddrTarget("::1", 2), []string{"[::1]:2"}, nil},
		// An override allows its address on its own port, no other.
		{transport.AddrTarget("127.0.0.1", 22), nil, ErrNotAllowed},
		{transport.AddrTarget("::ffff:127.0.0.1", 22), nil, ErrNotAllowed},
		{transport.AddrTarget("::1", 1), nil, ErrNotAllowed},
		// Telegram's ranges are open on Telegram's MTProto ports only.
		{transport.AddrTarget("149.154.167.51", 22), nil, ErrNotAllowed},
		{transport.AddrTarget("149.154.167.51", 5222), []string{"149.154.167.51:5222"}, nil},
		{transport.AddrTarget("2001:67c:4e8:f002::b", 8080), nil, ErrNotAllowed},
		// DC numbers outside |id| < 2^15 are unknown, whatever the table
		// holds; -2^31 has no positive counterpart (it once recursed
		// until the stack overflowed).
		{transport.DCTarget(-2147483648), nil, ErrUnknownDC},
		{transport.DCTarget(2147483647), nil, ErrUnknownDC},
		{transport.DCTarget(MaxID), nil, ErrUnknownDC},
		{transport.DCTarget(-MaxID), nil, ErrUnknownDC},
		{transport.DCTarget(-10004), []string{"127.0.0.2:3"}, nil},
		{transport.DCTarget(-7), nil, ErrUnknownDC},
		{transport.AddrTarget("127.0.0.3", 80), nil, ErrNotAllowed},
		{transport.AddrTarget("8.8.8.8", 53), nil, ErrNotAllowed},
		{transport.AddrTarget("::ffff:8.8.8.8", 53), nil, ErrNotAllowed},
	}
	for _, tt := range tests {
		got, err := tab.Resolve(context.Background(), nil, tt.target)
		if !errors.Is(err, tt.err) {
			t.Errorf("%v: err %v, want %v", tt.target, err, tt.err)
			continue
		}
		var s []string
		for _, a := range got {
			s = append(s, a.String())
		}
		if len(s) != len(tt.want) {
			t.Errorf("%v: got %v, want %v", tt.target, s, tt.want)
			continue
		}
		for j := range s {
			if s[j] != tt.want[j] {
				t.Errorf("%v: got %v, want %v", tt.target, s, tt.want)
			}
		}
	}
}

func TestResolveNameOutsideRanges(t *testing.T) {
	// localhost resolves to loopback only, which the built-in table refuses.
	if _, err := New().Resolve(context.Background(), nil, transport.AddrTarget("localhost", 80)); !errors.Is(err, ErrNotAllowed) {
		t.Errorf("localhost: %v, want ErrNotAllowed", err)
	}
}

func TestBuiltinAddressesAreInRanges(t *testing.T) {
	tab := New()
	for id, addrs := range builtin {
		for _, a := range addrs {
			if !tab.Allowed(netip.AddrPortFrom(netip.MustParseAddr(a), Port)) {
				t.Errorf("DC %d address %s is outside Telegram's ranges", id, a)
			}
		}
	}
}

func TestDialer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	tab := New()
	if err := tab.ParseOverrides([]string{"2=" + ln.Addr().String()}); err != nil {
		t.Fatal(err)
	}
	d := &Dialer{Table: tab}
	c, st, err := d.Dial(context.Background(), transport.DCTarget(2))
	if err != nil || st != transport.StatusOK {
		t.Fatalf("dial DC 2: %v %v", st, err)
	}
	c.Close()
	// A port nothing listens on, inside an allowed range.
	if err := tab.Allow("127.0.0.0/8"); err != nil {
		t.Fatal(err)
	}
	closed, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := closed.Addr().(*net.TCPAddr)
	closed.Close()
	if _, st, err := d.Dial(context.Background(), transport.AddrTarget("127.0.0.1", uint16(addr.Port))); err == nil || st != transport.StatusRefused {
		t.Errorf("closed port: status %v, err %v", st, err)
	}
	if _, st, err := d.Dial(context.Background(), transport.AddrTarget("10.1.2.3", 443)); !errors.Is(err, ErrNotAllowed) || st != transport.StatusNotAllowed {
		t.Errorf("outside address: status %v, err %v", st, err)
	}
}

func TestOverrideRefusesBadIDs(t *testing.T) {
	for _, spec := range []string{"0=127.0.0.1:1", "32768=127.0.0.1:1", "-32768=127.0.0.1:1", "-2147483648=127.0.0.1:1"} {
		if err := New().ParseOverrides([]string{spec}); err == nil {
			t.Errorf("%s: accepted", spec)
		}
	}
}

// FuzzDC checks that no DC number, valid or not, crashes a lookup, and
// that only numbers within |id| < MaxID ever resolve.
func FuzzDC(f *testing.F) {
	for _, id := range []int32{1, -2, 203, 10002, -10002, 0, -1 << 31, 1<<31 - 1, MaxID, -MaxID} {
		f.Add(id)
	}
	tab := New()
	if err := tab.ParseOverrides([]string{"-3=127.0.0.1:5", "10004=127.0.0.2:3"}); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, id int32) {
		addrs, err := tab.DC(id)
		if err == nil && !ValidID(id) {
			t.Fatalf("DC %d resolved to %v", id, addrs)
		}
		if err == nil && len(addrs) == 0 {
			t.Fatalf("DC %d: no addresses and no error", id)
		}
	})
}
