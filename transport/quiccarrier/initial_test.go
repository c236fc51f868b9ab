package quiccarrier

import (
	"errors"
	"net"
	"sync"

	"github.com/merpati/merpati/transport/hello"
	"github.com/merpati/merpati/transport/hello/quicinitial"
)

// readVarint decodes a QUIC variable-length integer (RFC 9000 section 16).
func readVarint(b []byte) (uint64, int, error) {
	if len(b) == 0 {
		return 0, 0, errors.New("truncated varint")
	}
	n := 1 << (b[0] >> 6)
	if len(b) < n {
		return 0, 0, errors.New("truncated varint")
	}
	v := uint64(b[0] & 0x3f)
	for _, c := range b[1:n] {
		v = v<<8 | uint64(c)
	}
	return v, n, nil
}

// helloCollector reassembles a client's ClientHello from its Initial
// packets, as tshark does, and parses it.
type helloCollector struct {
	quicinitial.Collector
}

// add processes one datagram from the client.
func (c *helloCollector) add(d []byte) error { return c.Add(d) }

// hello returns the ClientHello once all its bytes have arrived, parsed
// from a TLS record by [hello.Parse], and the handshake message.
func (c *helloCollector) hello() (*hello.ClientHello, []byte, bool) {
	msg, ok := c.ClientHello()
	if !ok {
		return nil, nil, false
	}
	msg = append([]byte(nil), msg...)
	rec := append([]byte{22, 3, 1, byte(len(msg) >> 8), byte(len(msg))}, msg...)
	h, err := hello.Parse(rec)
	if err != nil {
		return nil, nil, false
	}
	return h, msg, true
}

// recordingPacketConn hands the datagrams of each new client to a
// helloCollector until its ClientHello is complete, then reports it.
type recordingPacketConn struct {
	net.PacketConn
	hellos chan<- capturedHello

	mu      sync.Mutex
	clients map[string]*helloCollector
}

type capturedHello struct {
	hello     *hello.ClientHello
	msg       []byte
	datagrams []int
	from      string
}

func (r *recordingPacketConn) ReadFrom(b []byte) (int, net.Addr, error) {
	n, addr, err := r.PacketConn.ReadFrom(b)
	if err == nil {
		r.record(b[:n], addr.String())
	}
	return n, addr, err
}

func (r *recordingPacketConn) record(d []byte, from string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.clients == nil {
		r.clients = map[string]*helloCollector{}
	}
	c, ok := r.clients[from]
	if ok && c == nil {
		return // done with this client
	}
	if !ok {
		if len(d) == 0 || d[0]&0xf0 != 0xc0 { // long header, Initial
			return
		}
		c = &helloCollector{}
		r.clients[from] = c
	}
	if err := c.add(d); err != nil {
		r.clients[from] = nil
		return
	}
	if h, msg, ok := c.hello(); ok {
		r.clients[from] = nil
		r.hellos <- capturedHello{h, msg, c.Datagrams, from}
	}
}
