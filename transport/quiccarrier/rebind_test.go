package quiccarrier

import (
	"context"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"
)

// rebindConn is a client's UDP socket behind a NAT that rebinds: after
// rebind, what the client sends leaves from a new port, and the old port
// is gone.
type rebindConn struct {
	mu     sync.Mutex
	cur    *net.UDPConn
	rdl    time.Time
	closed bool
}

func newRebindConn() (*rebindConn, error) {
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return nil, err
	}
	return &rebindConn{cur: pc}, nil
}

// rebind moves the client to a new port and closes the old one.
func (c *rebindConn) rebind() error {
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return err
	}
	c.mu.Lock()
	old := c.cur
	c.cur = pc
	pc.SetReadDeadline(c.rdl)
	c.mu.Unlock()
	return old.Close()
}

func (c *rebindConn) current() *net.UDPConn {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cur
}

func (c *rebindConn) ReadFrom(b []byte) (int, net.Addr, error) {
	for {
		pc := c.current()
		n, addr, err := pc.ReadFrom(b)
		if err != nil {
			c.mu.Lock()
			moved := c.cur != pc && !c.closed
			c.mu.Unlock()
			if moved {
				continue // the old port closed under the read
			}
		}
		return n, addr, err
	}
}

func (c *rebindConn) WriteTo(b []byte, addr net.Addr) (int, error) {
	return c.current().WriteTo(b, addr)
}

func (c *rebindConn) Close() error {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	return c.current().Close()
}

func (c *rebindConn) LocalAddr() net.Addr { return c.current().LocalAddr() }

func (c *rebindConn) SetDeadline(t time.Time) error {
	c.SetWriteDeadline(t)
	return c.SetReadDeadline(t)
}

func (c *rebindConn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	c.rdl = t
	c.mu.Unlock()
	return c.current().SetReadDeadline(t)
}

func (c *rebindConn) SetWriteDeadline(t time.Time) error { return c.current().SetWriteDeadline(t) }

// SetReadBuffer and SetWriteBuffer keep quic-go from logging that it
// cannot set them.
func (c *rebindConn) SetReadBuffer(n int) error  { return c.current().SetReadBuffer(n) }
func (c *rebindConn) SetWriteBuffer(n int) error { return c.current().SetWriteBuffer(n) }

// TestNATRebinding: a key holder whose NAT gives it a new port mid-session
// goes on through the front door (by the relay's connection ID in its
// packets, RFC 9000 section 9.3), with the 4-byte IDs of a quic-go or
// Caddy cover, whose 1-byte MAC counts only for IDs the relay reserved,
// as with 8-byte ones. The rebinding comes after the reservations made
// with the IDs ran out (the relay's idle timeouts are short here): the
// ID the client uses stays reserved because the front door sees it in
// use.
func TestNATRebinding(t *testing.T) {
	const idle = 2 * time.Second
	for _, n := range []int{4, 8} {
		t.Run(fmt.Sprintf("%d-byte IDs", n), func(t *testing.T) {
			t.Parallel()
			tr := startRelayWith(t, func(c *ListenConfig) {
				c.ConnIDLen, c.IdleTimeout, c.FlowIdle = n, idle, idle
			})
			nat, err := newRebindConn()
			if err != nil {
				t.Fatal(err)
			}
			d, err := NewDialer(ClientConfig{
				Addr: tr.addr, ServerName: testSNI, Pin: tr.pin, Key: tr.key, KeepAlive: idle / 8,
				ListenPacket: func(context.Context) (net.PacketConn, error) { return nat, nil },
			})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			s, err := d.Dial(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			// A stream held open keeps the client pinging.
			held, err := openEcho(ctx, s)
			if err != nil {
				t.Fatal(err)
			}
			defer held.Close()
			echoOnce(t, s)
			time.Sleep(2 * idle) // past the reservations made with the IDs
			before := nat.LocalAddr().String()
			if err := nat.rebind(); err != nil {
				t.Fatal(err)
			}
			echoOnce(t, s)
			if err := echo(held, []byte("after the rebinding")); err != nil {
				t.Fatalf("the stream held across the rebinding: %v", err)
			}
			if s.Err() != nil {
				t.Fatalf("session ended: %v", s.Err())
			}
			t.Logf("moved from %s to %s", before, nat.LocalAddr())
		})
	}
}
