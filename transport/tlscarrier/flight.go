package tlscarrier

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	utls "github.com/refraction-networking/utls"
)

// A Flight is what a TLS server sends a Chrome hello, as an observer and
// the client see it: the ServerHello's choices, the sizes of the
// encrypted records of its first flight, its certificate chain, and the
// records it sends once the client's Finished has arrived (session
// tickets). [LearnFlight] measures a cover site's, so that the relay can
// answer key holders with a flight of the same shape.
type Flight struct {
	// Version is the negotiated TLS version.
	Version uint16
	// CipherSuite and Group are the ServerHello's choices (Group is the
	// key share's named group; 0 without TLS 1.3).
	CipherSuite uint16
	Group       utls.CurveID
	// Extensions lists the ServerHello's extension types in order.
	Extensions []uint16
	// ServerHelloLen is the length of the ServerHello record, header
	// included.
	ServerHelloLen int
	// Handshake lists the lengths (header included) of the encrypted
	// records that follow the ServerHello (and ChangeCipherSpec) up to
	// the server's Finished: EncryptedExtensions, Certificate,
	// CertificateVerify and Finished, one record each or merged as the
	// server writes them.
	Handshake []int
	// Tickets lists the lengths of the records carrying session tickets.
	// EarlyTickets is how many of them came with the first flight, before
	// the client's Finished (Go's crypto/tls sends its one ticket so;
	// OpenSSL sends two after it), and TicketDelay is how long after the
	// client's Finished the first of the others arrived.
	Tickets      []int
	EarlyTickets int
	TicketDelay  time.Duration
	// Chain is the server's certificate chain, leaf first, DER.
	Chain [][]byte
	// OCSP and SCTs are the stapled OCSP response and the signed
	// certificate timestamps the server sent with its leaf, if any.
	OCSP []byte
	SCTs [][]byte
	// LeafKey names the leaf's key: "RSA-2048", "ECDSA-P256", ....
	LeafKey string
	// ALPN is the negotiated application protocol.
	ALPN string
}

// String summarises f for logs.
func (f *Flight) String() string {
	return fmt.Sprintf("TLS %#04x, cipher %#04x, group %v, ServerHello %d B, handshake records %v, tickets %v (%d in the first flight, the others %v after the client's Finished), chain %v, leaf %s, ALPN %q",
		f.Version, f.CipherSuite, f.Group, f.ServerHelloLen, f.Handshake, f.Tickets, f.EarlyTickets, f.TicketDelay.Round(time.Millisecond),
		chainLens(f.Chain), f.LeafKey, f.ALPN)
}

func chainLens(chain [][]byte) []int {
	n := make([]int, len(chain))
	for i, c := range chain {
		n[i] = len(c)
	}
	return n
}

// ticketWait is how long LearnFlight waits for session tickets after the
// handshake: servers send them at once.
const ticketWait = 300 * time.Millisecond

// LearnFlight makes one TLS connection to the server at addr ("host:port")
// with the carrier's Chrome hello for serverName, offering h2 and
// http/1.1, and returns the flight the server answered with. It sends no
// request: a browser's connection that is opened but not yet used.
func LearnFlight(ctx context.Context, addr, serverName string) (*Flight, error) {
	var d net.Dialer
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("tlscarrier: learn flight: %w", err)
	}
	rc := &flightConn{Conn: raw}
	defer rc.Close()
	cache := &countingCache{}
	uc, err := ChromeClient(rc, &utls.Config{
		ServerName:         serverName,
		NextProtos:         []string{"h2", "http/1.1"},
		InsecureSkipVerify: true, // what is measured, not trusted
		ClientSessionCache: cache,
	})
	if err != nil {
		return nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		rc.SetDeadline(dl)
	}
	if err := uc.HandshakeContext(ctx); err != nil {
		return nil, fmt.Errorf("tlscarrier: learn flight: handshake with %s: %w", addr, err)
	}
	// Tickets come after the client's Finished; reading processes them
	// (and whatever application data follows: an HTTP/2 server's
	// SETTINGS).
	uc.SetReadDeadline(time.Now().Add(ticketWait))
	buf := make([]byte, 4096)
	for {
		if _, err := uc.Read(buf); err != nil {
			break
		}
	}
	st := uc.ConnectionState()
	f := &Flight{Version: st.Version, CipherSuite: st.CipherSuite, ALPN: st.NegotiatedProtocol, OCSP: st.OCSPResponse}
	f.SCTs = st.SignedCertificateTimestamps
	for _, c := range st.PeerCertificates {
		f.Chain = append(f.Chain, c.Raw)
	}
	if len(st.PeerCertificates) > 0 {
		f.LeafKey = keyName(st.PeerCertificates[0])
	}
	if err := f.readRecords(rc.records(), cache.count()); err != nil {
		return nil, fmt.Errorf("tlscarrier: learn flight from %s: %w", addr, err)
	}
	return f, nil
}

// readRecords fills f's record sizes from the server's records, in the
// order received, given the number of session tickets the client got.
func (f *Flight) readRecords(recs []flightRecord, tickets int) error {
	if len(recs) == 0 || recs[0].typ != recordHandshake {
		return errors.New("no ServerHello record")
	}
	sh := recs[0]
	f.ServerHelloLen = len(sh.raw)
	if err := f.parseServerHello(sh.raw[5:]); err != nil {
		return err
	}
	// The server's Finished, in a record of its own, is the last
	// handshake record: 4 bytes of header and the hash, sealed.
	finished := 5 + 4 + 32 + 17
	if f.CipherSuite == 0x1302 { // TLS_AES_256_GCM_SHA384
		finished += 16
	}
	sawFinished := false
	for _, r := range recs[1:] {
		switch {
		case r.typ == recordChangeCipherSpec:
		case !r.afterFinished && !sawFinished:
			f.Handshake = append(f.Handshake, len(r.raw))
			sawFinished = len(r.raw) == finished
		case len(f.Tickets) >= tickets:
		case !r.afterFinished:
			f.Tickets = append(f.Tickets, len(r.raw))
			f.EarlyTickets++
		default:
			if len(f.Tickets) == f.EarlyTickets {
				f.TicketDelay = r.at.Sub(r.clientFinished)
			}
			f.Tickets = append(f.Tickets, len(r.raw))
		}
	}
	return nil
}

// TLS record content types.
const (
	recordChangeCipherSpec = 20
	recordHandshake        = 22
)

// parseServerHello reads the cipher suite, extensions and key share
// group of a ServerHello handshake message.
func (f *Flight) parseServerHello(b []byte) error {
	// type(1) len(3) version(2) random(32) sid_len(1) sid cipher(2)
	// compression(1) ext_len(2) exts
	if len(b) < 4+2+32+1 || b[0] != 2 {
		return errors.New("not a ServerHello")
	}
	p := 4 + 2 + 32
	sl := int(b[p])
	p += 1 + sl
	if len(b) < p+2+1+2 {
		return errors.New("short ServerHello")
	}
	f.CipherSuite = binary.BigEndian.Uint16(b[p:])
	p += 3
	end := p + 2 + int(binary.BigEndian.Uint16(b[p:]))
	p += 2
	if end > len(b) {
		return errors.New("ServerHello extensions overrun")
	}
	for p+4 <= end {
		typ := binary.BigEndian.Uint16(b[p:])
		l := int(binary.BigEndian.Uint16(b[p+2:]))
		p += 4
		if p+l > end {
			return errors.New("ServerHello extension overruns")
		}
		f.Extensions = append(f.Extensions, typ)
		if typ == 51 && l >= 2 { // key_share
			f.Group = utls.CurveID(binary.BigEndian.Uint16(b[p:]))
		}
		p += l
	}
	return nil
}

func keyName(c *x509.Certificate) string {
	switch k := c.PublicKey.(type) {
	case *rsa.PublicKey:
		return fmt.Sprintf("RSA-%d", k.N.BitLen())
	case *ecdsa.PublicKey:
		return "ECDSA-" + strings.ReplaceAll(k.Curve.Params().Name, "-", "")
	case ed25519.PublicKey:
		return "Ed25519"
	}
	return fmt.Sprintf("%T", c.PublicKey)
}

// flightConn records the server's TLS records as they arrive and marks
// those that came after the client's Finished (its second write: the
// first is the ClientHello).
type flightConn struct {
	net.Conn
	mu             sync.Mutex
	buf            []byte
	recs           []flightRecord
	writes         int
	clientFinished time.Time
}

type flightRecord struct {
	typ            byte
	raw            []byte
	at             time.Time
	afterFinished  bool
	clientFinished time.Time
}

func (c *flightConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.buf = append(c.buf, b[:n]...)
	for len(c.buf) >= 5 {
		l := 5 + int(binary.BigEndian.Uint16(c.buf[3:5]))
		if len(c.buf) < l {
			break
		}
		c.recs = append(c.recs, flightRecord{
			typ: c.buf[0], raw: append([]byte(nil), c.buf[:l]...), at: time.Now(),
			afterFinished: c.writes >= 2, clientFinished: c.clientFinished,
		})
		c.buf = c.buf[l:]
	}
	return n, err
}

func (c *flightConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	c.writes++
	if c.writes == 2 {
		c.clientFinished = time.Now()
	}
	c.mu.Unlock()
	return c.Conn.Write(b)
}

func (c *flightConn) records() []flightRecord {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.recs
}

// countingCache counts the session tickets the server sends and offers
// none back.
type countingCache struct {
	mu sync.Mutex
	n  int
}

func (c *countingCache) Get(string) (*utls.ClientSessionState, bool) { return nil, false }

func (c *countingCache) Put(_ string, cs *utls.ClientSessionState) {
	if cs == nil {
		return
	}
	c.mu.Lock()
	c.n++
	c.mu.Unlock()
}

func (c *countingCache) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n
}
