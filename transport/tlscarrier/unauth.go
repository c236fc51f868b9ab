package tlscarrier

import (
	"fmt"
	"net"
	"net/netip"
	"sync"
)

// An unauthLimiter counts the connections that have not authenticated, in
// all and per source network, against [ListenConfig.MaxUnauthConns] and
// [ListenConfig.MaxUnauthPerSource]. It is safe for concurrent use.
type unauthLimiter struct {
	max, perSource int

	mu       sync.Mutex
	n        int
	bySource map[netip.Prefix]int
}

// acquire counts a connection from addr. It returns a function that stops
// counting it (safe to call more than once), or, if a cap is reached,
// counts nothing and says which one in over.
func (l *unauthLimiter) acquire(addr net.Addr) (release func(), over string) {
	src := sourceNet(addr)
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case l.n >= l.max:
		return nil, fmt.Sprintf("too many unauthenticated connections (MaxUnauthConns %d)", l.max)
	case l.bySource[src] >= l.perSource:
		return nil, fmt.Sprintf("too many unauthenticated connections from one network (MaxUnauthPerSource %d)", l.perSource)
	}
	if l.bySource == nil {
		l.bySource = make(map[netip.Prefix]int)
	}
	l.n++
	l.bySource[src]++
	var once sync.Once
	return func() {
		once.Do(func() {
			l.mu.Lock()
			defer l.mu.Unlock()
			l.n--
			if l.bySource[src]--; l.bySource[src] <= 0 {
				delete(l.bySource, src)
			}
		})
	}, ""
}

// sourceNet returns the network a connection comes from, as the per-source
// cap counts it: the /24 of an IPv4 address, the /64 of an IPv6 one (a
// host is commonly given a whole /64). Addresses that are not IP share
// the zero prefix.
func sourceNet(addr net.Addr) netip.Prefix {
	var ip netip.Addr
	switch a := addr.(type) {
	case nil:
	case *net.TCPAddr:
		ip = a.AddrPort().Addr()
	default:
		if ap, err := netip.ParseAddrPort(addr.String()); err == nil {
			ip = ap.Addr()
		}
	}
	ip = ip.Unmap()
	bits := 64
	if ip.Is4() {
		bits = 24
	}
	p, err := ip.Prefix(bits)
	if err != nil {
		return netip.Prefix{}
	}
	return p
}
