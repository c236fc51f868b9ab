package relay_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/merpati/merpati/relay/access"
	"github.com/merpati/merpati/relay/relaytest"
	"github.com/merpati/merpati/transport/auth"
	"github.com/merpati/merpati/transport/link"
	"github.com/merpati/merpati/transport/tlscarrier"
)

// The idle cadence of a key holder's session against a browser's
// connection to the cover site (issue 14, item 2): a censor on the path
// sees when each idle connection ends, who ends it and how.

// capNginxIdle is the test nginx's keepalive_timeout: short, so that the
// test is quick (nginx's default is 75 s).
const capNginxIdle = 8 * time.Second

// TestIdleLikeChromium taps Chromium loading nginx and a key holder's
// session to a relay in front of that nginx, which has learned nginx's
// idle close, and leaves both idle until the server closes them. On the
// wire the two must show the same server flight (record sizes up to the
// session tickets), no record at all while idle, the server's close after
// the same idle time (within max(2 s, 25 %)), and the client's answer to
// it: Chromium sends no close_notify, only a FIN, and neither may the key
// holder. It logs when the session tickets came, after the client's
// Finished, from each server.
//
// Without /usr/bin/chromium the test is skipped, unless the environment
// variable CI is set, in which case it fails; so it is without nginx
// (see [relaytest.StartNginx]).
func TestIdleLikeChromium(t *testing.T) {
	chromium, err := exec.LookPath("/usr/bin/chromium")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("chromium is required in CI: %v", err)
		}
		t.Skipf("chromium not installed: %v", err)
	}
	relaytest.CheckLeaks(t)
	ng := relaytest.StartNginxWith(t, relaytest.NginxOptions{KeepaliveTimeout: capNginxIdle})
	r := relaytest.Start(t, ng, relaytest.Options{Carriers: []string{link.CarrierTLS}, KeyKind: "RSA-2048"})
	l := r.AddKey(t, "alice", access.Entry{})

	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	err = r.Relay.LearnIdle(ctx)
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	inForce, from := r.Relay.IdleTimeout()
	t.Logf("nginx keepalive_timeout %v; the relay's session idle timeout %v (from %s)", capNginxIdle, inForce.Round(time.Millisecond), from)
	if from != "cover site" {
		t.Errorf("the relay's idle timeout comes from %s, want the cover site", from)
	}
	ctx, cancel = context.WithTimeout(t.Context(), 20*time.Second)
	flight, err := tlscarrier.LearnFlight(ctx, ng.Addr(), relaytest.CoverName)
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	lateTickets := len(flight.Tickets) - flight.EarlyTickets

	ctap := startCapTap(t, ng.Addr())
	rtap := startCapTap(t, r.Addr)
	// Long enough for the relay's close without its idle close learned
	// (64 s) to be seen as late, not as missing.
	limit := 3*capNginxIdle + 20*time.Second

	var wg sync.WaitGroup
	wg.Go(func() {
		ctx, cancel := context.WithTimeout(context.Background(), limit)
		defer cancel()
		port := ctap.ln.Addr().(*net.TCPAddr).Port
		cmd := exec.CommandContext(ctx, chromium,
			"--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
			"--disable-background-networking", "--disable-component-update", "--disable-sync",
			"--user-data-dir="+t.TempDir(), "--ignore-certificate-errors", "--disable-quic",
			"--remote-debugging-port=0",
			fmt.Sprintf("--host-resolver-rules=MAP %s 127.0.0.1:%d, MAP * ~NOTFOUND", relaytest.CoverName, port),
			fmt.Sprintf("https://%s/", relaytest.CoverName))
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
		cmd.WaitDelay = 5 * time.Second
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Errorf("chromium: %v", err)
			return
		}
		// Chromium keeps running; it is stopped once nginx has closed
		// the connection that loaded the page (and it has answered).
		ctap.waitClosed(0, limit)
		time.Sleep(500 * time.Millisecond)
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		cmd.Wait()
	})
	wg.Go(func() {
		d, err := tlscarrier.NewDialer(tlscarrier.ClientConfig{
			Addr: rtap.ln.Addr().String(), ServerName: l.SNI, Pin: l.Pin, Key: auth.Key(l.Key), AuthKey: l.AuthKey,
		})
		if err != nil {
			t.Error(err)
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		s, err := d.Dial(ctx)
		cancel()
		if err != nil {
			t.Error(err)
			return
		}
		select {
		case <-s.Done():
		case <-time.After(limit):
			t.Logf("the key holder's session still up after %v: closing it", limit)
		}
		s.Close()
		rtap.waitClosed(1, 10*time.Second)
	})
	wg.Wait()
	t.Logf("Chromium -> nginx (tap):\n%s", ctap.dump())
	t.Logf("key holder -> relay (tap):\n%s", rtap.dump())

	cc, rc := ctap.conn(0), rtap.conn(1)
	if cc == nil || rc == nil {
		t.Fatalf("connections seen: Chromium's with a request %v, key holder's %v", cc != nil, rc != nil)
	}
	cf, rf := cc.flight(lateTickets), rc.flight(lateTickets)
	t.Logf("server flight (record lengths, up to %d tickets after the client's Finished): nginx to Chromium %v, relay to key holder %v", lateTickets, cf.sizes, rf.sizes)
	t.Logf("first ticket after the client's Finished: nginx %v, relay %v", cf.ticketDelay.Round(10*time.Microsecond), rf.ticketDelay.Round(10*time.Microsecond))
	if !slices.Equal(cf.sizes, rf.sizes) {
		t.Errorf("server flight: relay's %v, nginx's %v", rf.sizes, cf.sizes)
	}

	ci, err := cc.idle()
	if err != nil {
		t.Fatalf("Chromium's connection: %v", err)
	}
	ri, err := rc.idle()
	if err != nil {
		t.Fatalf("key holder's connection: %v", err)
	}
	t.Logf("idle close: nginx closed Chromium's connection after %v idle, the relay the key holder's after %v",
		ci.gap.Round(time.Millisecond), ri.gap.Round(time.Millisecond))
	for _, c := range []struct {
		who string
		i   capIdle
	}{{"Chromium's connection", ci}, {"the key holder's session", ri}} {
		if c.i.busyAfter > time.Second || c.i.busyBefore > 5*time.Second {
			t.Errorf("%s: records outside its start (%v) and close (%v): something was sent while idle",
				c.who, c.i.busyBefore.Round(time.Millisecond), c.i.busyAfter.Round(time.Millisecond))
		}
		if !c.i.serverEOF {
			t.Errorf("%s: the server did not close it within %v", c.who, limit)
		}
	}
	if d, tol := (ri.gap - ci.gap).Abs(), max(2*time.Second, ci.gap/4); d > tol {
		t.Errorf("the relay closed an idle session after %v, nginx Chromium's connection after %v: %v apart, more than %v",
			ri.gap.Round(time.Millisecond), ci.gap.Round(time.Millisecond), d.Round(time.Millisecond), tol)
	}
	t.Logf("client's answer to the close: Chromium %d records then %s, key holder %d records then %s",
		len(ci.clientClose), ci.clientEnd, len(ri.clientClose), ri.clientEnd)
	// Chromium ends with a FIN, or with an RST when it closes its socket
	// before reading nginx's close_notify (unread bytes turn the kernel's
	// FIN into an RST); both have been seen here. What it never does is
	// answer with a record, and a FIN is what it sends when it has read
	// everything, as the key holder's client does.
	if len(ri.clientClose) != len(ci.clientClose) || (ci.clientEnd != "RST" && ri.clientEnd != ci.clientEnd) {
		t.Errorf("the key holder answered the relay's close with records %v then %s; Chromium answers nginx's with %v then %s",
			ri.clientClose, ri.clientEnd, ci.clientClose, ci.clientEnd)
	}
	if len(ri.clientClose) != 0 || ri.clientEnd != "FIN" {
		t.Errorf("the key holder answered the relay's close with records %v (a close_notify is 19 bytes long) then %s, want a FIN alone",
			ri.clientClose, ri.clientEnd)
	}
}

// A capTap forwards TCP connections to an address and records the TLS
// records each way, with their times.
type capTap struct {
	ln    net.Listener
	addr  string
	mu    sync.Mutex
	cond  *sync.Cond
	conns []*capConn
	wg    sync.WaitGroup
}

// capConn is what one tapped connection carried.
type capConn struct {
	start  time.Time
	events []capEvent
	closed [2]bool // each direction has ended: client, server
	open   []net.Conn
}

// A capEvent is one TLS record, or the end of one direction.
type capEvent struct {
	at     time.Duration // since the connection was accepted
	client bool          // client to server
	typ    byte          // record content type; 0 for the end
	n      int           // record length (without the header)
	end    string        // "FIN", "RST" or another error, for the end
}

func (e capEvent) String() string {
	dir := "<"
	if e.client {
		dir = ">"
	}
	if e.typ == 0 {
		return fmt.Sprintf("%9.3fs %s %s", e.at.Seconds(), dir, e.end)
	}
	return fmt.Sprintf("%9.3fs %s %d type %d", e.at.Seconds(), dir, e.n, e.typ)
}

func startCapTap(t *testing.T, addr string) *capTap {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tp := &capTap{ln: ln, addr: addr}
	tp.cond = sync.NewCond(&tp.mu)
	t.Cleanup(func() {
		ln.Close()
		tp.mu.Lock()
		for _, c := range tp.conns {
			for _, o := range c.open {
				o.Close()
			}
		}
		tp.mu.Unlock()
		tp.wg.Wait()
	})
	tp.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			tp.wg.Go(func() { tp.serve(c) })
		}
	})
	return tp
}

func (tp *capTap) serve(c net.Conn) {
	defer c.Close()
	cc := &capConn{start: time.Now()}
	tp.mu.Lock()
	tp.conns = append(tp.conns, cc)
	cc.open = append(cc.open, c)
	tp.mu.Unlock()
	up, err := net.Dial("tcp", tp.addr)
	if err != nil {
		tp.add(cc, capEvent{client: false, end: err.Error()}, 1)
		return
	}
	defer up.Close()
	tp.mu.Lock()
	cc.open = append(cc.open, up)
	tp.mu.Unlock()
	var wg sync.WaitGroup
	wg.Go(func() {
		tp.copy(cc, true, up, c)
		up.(*net.TCPConn).CloseWrite()
	})
	tp.copy(cc, false, c, up)
	c.(*net.TCPConn).CloseWrite()
	wg.Wait()
}

// copy forwards src to dst record by record, recording each.
func (tp *capTap) copy(cc *capConn, client bool, dst io.Writer, src io.Reader) {
	side := 1
	if client {
		side = 0
	}
	hdr := make([]byte, 5)
	buf := make([]byte, 1<<16)
	for {
		if _, err := io.ReadFull(src, hdr); err != nil {
			end := err.Error()
			switch {
			case errors.Is(err, io.EOF):
				end = "FIN"
			case errors.Is(err, syscall.ECONNRESET):
				end = "RST"
			}
			tp.add(cc, capEvent{client: client, end: end}, side)
			return
		}
		n := int(binary.BigEndian.Uint16(hdr[3:]))
		if _, err := io.ReadFull(src, buf[:n]); err != nil {
			tp.add(cc, capEvent{client: client, end: "short record: " + err.Error()}, side)
			return
		}
		tp.add(cc, capEvent{client: client, typ: hdr[0], n: n}, -1)
		if _, err := dst.Write(append(hdr[:5:5], buf[:n]...)); err != nil {
			return
		}
	}
}

// add records e; an end (side 0: client, 1: server) wakes waitClosed.
func (tp *capTap) add(cc *capConn, e capEvent, side int) {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	e.at = time.Since(cc.start)
	cc.events = append(cc.events, e)
	if side >= 0 {
		cc.closed[side] = true
		tp.cond.Broadcast()
	}
}

// waitClosed waits up to d for both directions of the n-th connection
// (from 1; 0: the first that carried a request) to end.
func (tp *capTap) waitClosed(n int, d time.Duration) {
	t := time.AfterFunc(d, func() {
		tp.mu.Lock()
		tp.cond.Broadcast()
		tp.mu.Unlock()
	})
	defer t.Stop()
	deadline := time.Now().Add(d)
	tp.mu.Lock()
	defer tp.mu.Unlock()
	for time.Now().Before(deadline) {
		if c := tp.connLocked(n); c != nil && c.closed == [2]bool{true, true} {
			return
		}
		tp.cond.Wait()
	}
}

// conn returns a copy of the n-th connection's record (from 1; 0: the
// first that carried a request), or nil.
func (tp *capTap) conn(n int) *capConn {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	c := tp.connLocked(n)
	if c == nil {
		return nil
	}
	cp := *c
	cp.events = slices.Clone(c.events)
	return &cp
}

// capRequest is the least length of a record that carries a browser's
// request HEADERS (Chromium's for a page: 465 bytes).
const capRequest = 300

// connLocked returns the n-th connection (from 1; 0: the first whose
// client sent a record of a request's length after its Finished), or nil.
// Chromium may open a connection or two besides the one it loads the
// page on, and drop them. tp.mu is held.
func (tp *capTap) connLocked(n int) *capConn {
	if n > 0 {
		if len(tp.conns) < n {
			return nil
		}
		return tp.conns[n-1]
	}
	for _, c := range tp.conns {
		finished := false
		for _, e := range c.events {
			if e.client && e.typ == 23 {
				if finished && e.n >= capRequest {
					return c
				}
				finished = true
			}
		}
	}
	return nil
}

func (tp *capTap) dump() string {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	var b strings.Builder
	for i, c := range tp.conns {
		fmt.Fprintf(&b, "c%d opened %.3fs after c1\n", i+1, c.start.Sub(tp.conns[0].start).Seconds())
		for _, e := range c.events {
			fmt.Fprintf(&b, "c%d %v\n", i+1, e)
		}
	}
	return b.String()
}

// capFlight is a server's flight as the tap saw it.
type capFlight struct {
	// sizes lists the lengths of the server's records before the
	// client's Finished, then of the first tickets ones after it.
	sizes []int
	// ticketDelay is the time from the client's Finished to the
	// server's next record.
	ticketDelay time.Duration
}

// flight reads the server's flight: the client's Finished is its first
// encrypted record (type 23).
func (c *capConn) flight(tickets int) capFlight {
	var f capFlight
	var finished time.Duration = -1
	for _, e := range c.events {
		switch {
		case e.typ == 0:
		case e.client && e.typ == 23 && finished < 0:
			finished = e.at
		case e.client:
		case finished < 0:
			f.sizes = append(f.sizes, e.n)
		case tickets > 0:
			if f.ticketDelay == 0 {
				f.ticketDelay = e.at - finished
			}
			f.sizes = append(f.sizes, e.n)
			tickets--
		}
	}
	return f
}

// capIdle is how a connection went idle and ended.
type capIdle struct {
	// gap is the longest time without a record either way: from the
	// last record of the connection's use to the first of the server's
	// close.
	gap time.Duration
	// busyBefore is how long the records before the gap lasted from the
	// first, busyAfter those from the gap to the end of both directions.
	busyBefore, busyAfter time.Duration
	// serverEOF tells whether the server ended the connection: the
	// first record after the gap is the server's, and its direction
	// ended with a FIN.
	serverEOF bool
	// clientClose lists the lengths of the records the client sent
	// after the gap, and clientEnd how its direction ended.
	clientClose []int
	clientEnd   string
}

// idle finds the connection's idle gap and what came after it.
func (c *capConn) idle() (capIdle, error) {
	var i capIdle
	ev := c.events
	if len(ev) < 2 {
		return i, fmt.Errorf("%d events", len(ev))
	}
	at := 1
	for k := 1; k < len(ev); k++ {
		if g := ev[k].at - ev[k-1].at; g > i.gap {
			i.gap, at = g, k
		}
	}
	i.busyBefore = ev[at-1].at - ev[0].at
	i.busyAfter = ev[len(ev)-1].at - ev[at].at
	for _, e := range ev[at:] {
		switch {
		case !e.client && e.typ == 0:
			i.serverEOF = !ev[at].client && e.end == "FIN"
		case e.client && e.typ == 0:
			i.clientEnd = e.end
		case e.client:
			i.clientClose = append(i.clientClose, e.n)
		}
	}
	if i.clientEnd == "" {
		i.clientEnd = "nothing"
	}
	return i, nil
}
