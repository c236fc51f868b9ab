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
		{transport.AddrTarget("127.0.0.1", 22), []string{"127.0.0.1:22"}, nil},
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
			if !tab.Allowed(netip.MustParseAddr(a)) {
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
