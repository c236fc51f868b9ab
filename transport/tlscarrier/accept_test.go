package tlscarrier

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

// writeLog is a connection that records the length of each Write.
type writeLog struct {
	net.Conn
	mu     sync.Mutex
	writes []int
}

func (c *writeLog) Write(b []byte) (int, error) {
	c.mu.Lock()
	c.writes = append(c.writes, len(b))
	c.mu.Unlock()
	return c.Conn.Write(b)
}

func (c *writeLog) log() []int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]int(nil), c.writes...)
}

// TestAcceptOneWrite: what the relay sends after the handshake (a cover
// site's late session tickets, then HTTP/2 SETTINGS and WINDOW_UPDATE)
// leaves in one write, so in one TCP segment as from a web server, and
// the client reads the tickets' records first, then the preface.
func TestAcceptOneWrite(t *testing.T) {
	cert, _ := confCert(t)
	tickets := []int{282, 282}
	m := &Mirror{}
	m.cur.Store(&mirrorState{cert: cert, flight: &Flight{Tickets: tickets}})

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type result struct {
		log []int // the server's writes when Accept returned
		err error
	}
	done := make(chan result, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- result{err: err}
			return
		}
		wl := &writeLog{Conn: c}
		// A relay has read the hello itself; here Accept reads it all.
		s, err := Accept(context.Background(), wl, nil, ServerConfig{Certificate: cert, Mirror: m})
		if err != nil {
			c.Close()
			done <- result{err: err}
			return
		}
		done <- result{log: wl.log()}
		s.Close()
	}()

	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}, ServerName: confServerName})
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	// The tickets' frames (of a type HTTP/2 ignores), then SETTINGS.
	fr := http2.NewFramer(io.Discard, tc)
	var types []http2.FrameType
	for len(types) < len(tickets)+1 {
		tc.SetReadDeadline(time.Now().Add(10 * time.Second))
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("after frames %v: %v", types, err)
		}
		types = append(types, f.Header().Type)
	}
	if types[0] != frameTypeFiller || types[1] != frameTypeFiller || types[2] != http2.FrameSettings {
		t.Errorf("client read frames of types %v, want the tickets' two, then SETTINGS", types)
	}
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	// The handshake's flight, then the tickets' two records of 282 bytes
	// with the preface's record.
	t.Logf("server writes: %v", r.log)
	if len(r.log) != 2 || r.log[1] <= 2*282 {
		t.Errorf("server writes %v: want the flight, then one write of the tickets and the HTTP/2 preface", r.log)
	}
}
