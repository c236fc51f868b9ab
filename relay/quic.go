package relay

import (
	"context"
	"fmt"
	"net"
	"time"

	"github.com/merpati/merpati/transport"
	"github.com/merpati/merpati/transport/quiccarrier"
)

// coverCheckTimeout bounds the QUIC handshake with the cover site that
// [Relay.ListenQUIC] makes first.
const coverCheckTimeout = 10 * time.Second

// ListenQUIC starts the QUIC carrier on pc, which it then owns. Its front
// door relays every client whose first Initial carries no key holder's
// token to the cover site's own UDP port (the cover's host and port
// number), so a prober talks QUIC with the cover site itself; key holders'
// connections become sessions. Serve them with [Relay.ServeListeners].
//
// It first checks, with one QUIC handshake, that the cover site serves
// HTTP/3 there, and learns the length of its connection IDs, which the
// relay's then have too. When the cover site does not answer, it closes pc
// and returns an error wrapping [quiccarrier.ErrNoHTTP3]: a relay whose
// UDP port answers where the cover site's does not gives itself away, so
// the port must stay closed (the host then answers with ICMP port
// unreachable, as the cover site's does).
func (r *Relay) ListenQUIC(pc net.PacketConn) (transport.Listener, error) {
	// A reload meanwhile would check a new cover site for HTTP/3 only if
	// it knew of the carrier.
	r.reloadMu.Lock()
	defer r.reloadMu.Unlock()
	live := r.live.Load()
	ctx, cancel := context.WithTimeout(context.Background(), coverCheckTimeout)
	defer cancel()
	info, err := quiccarrier.CheckCover(ctx, live.cover, live.serverName)
	if err != nil {
		pc.Close()
		return nil, err
	}
	udp, err := net.ResolveUDPAddr("udp", live.cover)
	if err != nil {
		pc.Close()
		return nil, fmt.Errorf("relay: cover site %s: %w", live.cover, err)
	}
	l, err := quiccarrier.Listen(pc, quiccarrier.ListenConfig{
		Certificate: r.cfg.Certificate,
		Auth:        authenticator{r},
		Cover:       live.cover,
		DialCover:   r.dialCoverUDP,
		ConnIDLen:   info.ConnIDLen,
		Mirror:      r.mirror,
		Logger:      r.log,
	})
	if err != nil {
		return nil, err
	}
	next := *live
	next.coverUDP = udp
	r.live.Store(&next)
	r.quicIDLen = info.ConnIDLen
	return l, nil
}

// ServeQUIC serves the QUIC carrier on pc (see [Relay.ListenQUIC]) until
// ctx is done or pc fails, and closes pc.
func (r *Relay) ServeQUIC(ctx context.Context, pc net.PacketConn) error {
	l, err := r.ListenQUIC(pc)
	if err != nil {
		return fmt.Errorf("relay: %w", err)
	}
	return r.ServeListeners(ctx, l)
}

// ServeBoth serves the TLS carrier on ln and the QUIC carrier on pc until
// ctx is done or either fails, and closes both. It returns the first
// error.
func (r *Relay) ServeBoth(ctx context.Context, ln net.Listener, pc net.PacketConn) error {
	tl, err := r.ListenTLS(ln)
	if err != nil {
		ln.Close()
		pc.Close()
		return fmt.Errorf("relay: %w", err)
	}
	ql, err := r.ListenQUIC(pc)
	if err != nil {
		tl.Close()
		return fmt.Errorf("relay: %w", err)
	}
	return r.ServeListeners(ctx, tl, ql)
}
