package quiccarrier

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"

	"github.com/merpati/merpati/transport/hello/quicinitial"
)

// CoverInfo is what [CheckCover] learned of a cover site's QUIC service.
type CoverInfo struct {
	// ConnIDLen is the length of the connection IDs the cover site
	// chooses (the source connection ID of its long header packets),
	// for [ListenConfig.ConnIDLen].
	ConnIDLen int
}

// ErrNoHTTP3 means the cover site does not answer HTTP/3 on UDP.
var ErrNoHTTP3 = errors.New("quiccarrier: the cover site does not serve HTTP/3 on UDP")

// CheckCover completes one QUIC handshake with the cover site at addr
// ("host:port", UDP), offering HTTP/3 with serverName, as a browser would.
// The relay runs its QUIC carrier only in front of a cover site that
// answers: anywhere else its UDP port would answer where the cover site's
// does not. The error wraps [ErrNoHTTP3] when no handshake completed.
func CheckCover(ctx context.Context, addr, serverName string) (CoverInfo, error) {
	raddr, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return CoverInfo{}, fmt.Errorf("%w: %s: %w", ErrNoHTTP3, addr, err)
	}
	// A connected socket hears the ICMP port unreachable of a host with
	// no UDP service there, and fails the handshake at once.
	conn, err := net.DialUDP("udp", nil, raddr)
	if err != nil {
		return CoverInfo{}, fmt.Errorf("quiccarrier: check cover: %w", err)
	}
	rec := &scidRecorder{conn: conn}
	tr := &quic.Transport{Conn: rec}
	defer tr.Close()
	defer conn.Close()
	c, err := tr.Dial(ctx, raddr, &tls.Config{
		ServerName: serverName,
		NextProtos: []string{http3.NextProtoH3},
		// What matters is that it answers; its certificate is the
		// operator's business and is checked on TCP.
		InsecureSkipVerify: true,
	}, &quic.Config{})
	if err != nil {
		return CoverInfo{}, fmt.Errorf("%w: %s: %w", ErrNoHTTP3, addr, err)
	}
	c.CloseWithError(0, "")
	info := CoverInfo{ConnIDLen: rec.scidLen()}
	if info.ConnIDLen < 4 {
		// Too short to carry the relay's MAC; a server that sends so
		// short an ID is rare, and the default is common.
		info.ConnIDLen = DefaultConnIDLen
	}
	return info, nil
}

// scidRecorder is a connected UDP socket as a net.PacketConn for quic-go.
// It notes the source connection ID length of the first long header
// packet it receives.
type scidRecorder struct {
	conn *net.UDPConn
	mu   sync.Mutex
	n    int
	got  bool
}

func (r *scidRecorder) ReadFrom(b []byte) (int, net.Addr, error) {
	n, err := r.conn.Read(b)
	addr := r.conn.RemoteAddr()
	if err == nil {
		if h, perr := quicinitial.ParseLong(b[:n]); perr == nil && h.Version != 0 {
			r.mu.Lock()
			if !r.got {
				r.n, r.got = len(h.SCID), true
			}
			r.mu.Unlock()
		}
	}
	return n, addr, err
}

func (r *scidRecorder) scidLen() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.n
}

func (r *scidRecorder) WriteTo(b []byte, _ net.Addr) (int, error) { return r.conn.Write(b) }
func (r *scidRecorder) Close() error                              { return r.conn.Close() }
func (r *scidRecorder) LocalAddr() net.Addr                       { return r.conn.LocalAddr() }
func (r *scidRecorder) SetDeadline(t time.Time) error             { return r.conn.SetDeadline(t) }
func (r *scidRecorder) SetReadDeadline(t time.Time) error         { return r.conn.SetReadDeadline(t) }
func (r *scidRecorder) SetWriteDeadline(t time.Time) error        { return r.conn.SetWriteDeadline(t) }
func (r *scidRecorder) SetReadBuffer(n int) error                 { return r.conn.SetReadBuffer(n) }
func (r *scidRecorder) SetWriteBuffer(n int) error                { return r.conn.SetWriteBuffer(n) }
