// Package dc is the relay's map of Telegram: the built-in datacenter table,
// Telegram's published address ranges, and a dialer that refuses to
// connect anywhere else.
//
// A relay is a volunteer's server. It must never become an open proxy, so
// every stream's target is checked here before any packet leaves: a DC
// number is looked up in the table, an address must lie in an allowed range,
// and a domain name is resolved and every resolved address checked (a name
// that resolves outside the ranges is refused, which also stops DNS
// rebinding tricks). Operators and tests may override DC entries and add
// ranges; tests use this to point "Telegram" at local servers.
package dc

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/merpati/merpati/transport"
)

// Port is the port of every built-in DC address.
const Port = 443

// MaxID bounds the DC numbers a stream may ask for: |id| < MaxID. Telegram
// numbers production DCs 1-5 and 203, test DCs 10000+N as MTProxy clients
// send them, and media DCs as the negative of their DC, so 2^15 covers every
// number in use with room to spare. Anything else is refused before any
// lookup (a DC of -2^31 has no positive counterpart in an int32).
const MaxID = 1 << 15

// telegramPorts are the ports Telegram's datacenters serve MTProto on (the
// ports of the dc_options in help.getConfig). Addresses in Telegram's
// ranges may be dialled on these ports only, so a relay cannot be used to
// reach any other service that happens to live in those ranges.
var telegramPorts = []uint16{443, 80, 88, 5222}

// builtin holds the production datacenters (DC 1-5 and the CDN-era DC 203)
// and the test datacenters, as Telegram documents them. Test DCs are
// numbered 10000+N, as MTProxy clients send them.
var builtin = map[int32][]string{
	1:     {"149.154.175.53", "2001:b28:f23d:f001::a"},
	2:     {"149.154.167.51", "2001:67c:4e8:f002::a"},
	3:     {"149.154.175.100", "2001:b28:f23d:f003::a"},
	4:     {"149.154.167.91", "2001:67c:4e8:f004::a"},
	5:     {"91.108.56.130", "2001:b28:f23f:f005::a"},
	203:   {"91.105.192.100", "2a0a:f280:203:a:5000::100"},
	10001: {"149.154.175.10", "2001:b28:f23d:f001::e"},
	10002: {"149.154.167.40", "2001:67c:4e8:f002::e"},
	10003: {"149.154.175.117", "2001:b28:f23d:f003::e"},
}

// telegramRanges are Telegram's published address ranges
// (core.telegram.org/resources/cidr.txt).
var telegramRanges = []string{
	"91.105.192.0/23", "91.108.4.0/22", "91.108.8.0/22", "91.108.12.0/22",
	"91.108.16.0/22", "91.108.20.0/22", "91.108.56.0/22", "95.161.64.0/20",
	"149.154.160.0/20", "185.76.151.0/24",
	"2001:67c:4e8::/48", "2001:b28:f23c::/48", "2001:b28:f23d::/48",
	"2001:b28:f23f::/48", "2a0a:f280::/32",
}

// Errors from [Table.Resolve].
var (
	// ErrNotAllowed means the target is not a Telegram datacenter.
	ErrNotAllowed = errors.New("dc: target is not a Telegram datacenter")
	// ErrUnknownDC means the DC number is not in the table.
	ErrUnknownDC = errors.New("dc: unknown datacenter number")
)

// A Table maps DC numbers to addresses and holds the allowed ranges. Build
// one with [New] and change it only before use; after that it is read-only
// and safe for concurrent use.
type Table struct {
	dcs map[int32][]netip.AddrPort
	// telegram are Telegram's ranges: allowed on telegramPorts only.
	telegram []netip.Prefix
	// exact are addresses given by overrides: allowed on their port only.
	exact map[netip.AddrPort]bool
	// allow are ranges the operator added with [Table.Allow]: any port.
	allow []netip.Prefix
}

// New returns the built-in table: Telegram's datacenters and address
// ranges.
func New() *Table {
	t := &Table{dcs: make(map[int32][]netip.AddrPort), exact: make(map[netip.AddrPort]bool)}
	for id, addrs := range builtin {
		for _, a := range addrs {
			t.dcs[id] = append(t.dcs[id], netip.AddrPortFrom(netip.MustParseAddr(a), Port))
		}
	}
	for _, p := range telegramRanges {
		t.telegram = append(t.telegram, netip.MustParsePrefix(p))
	}
	return t
}

// Override sets the addresses of DC id to addr ("host:port", IP literal
// host): with replace, in place of the current ones, else in addition. The
// address is also allowed as a target, on exactly that port.
func (t *Table) Override(id int32, addr string, replace bool) error {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return fmt.Errorf("dc %d: %w", id, err)
	}
	if !ValidID(id) {
		return fmt.Errorf("dc %d: %w", id, ErrUnknownDC)
	}
	ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	if replace {
		t.dcs[id] = nil
	}
	t.dcs[id] = append(t.dcs[id], ap)
	t.exact[ap] = true
	return nil
}

// ValidID reports whether id is a DC number a stream may ask for: not zero
// and |id| < [MaxID].
func ValidID(id int32) bool { return id != 0 && id > -MaxID && id < MaxID }

// ParseOverrides applies flags of the form "ID=HOST:PORT": the first
// override of an ID replaces its built-in addresses, later ones add to
// them.
func (t *Table) ParseOverrides(specs []string) error {
	seen := make(map[int32]bool)
	for _, s := range specs {
		idStr, addr, ok := strings.Cut(s, "=")
		id, err := strconv.ParseInt(idStr, 10, 32)
		if !ok || err != nil {
			return fmt.Errorf("dc override %q: want ID=HOST:PORT", s)
		}
		if err := t.Override(int32(id), addr, !seen[int32(id)]); err != nil {
			return err
		}
		seen[int32(id)] = true
	}
	return nil
}

// Allow adds an allowed address range, such as "127.0.0.0/8" in tests, on
// every port: it is meant for test labs, whose "datacenters" listen on
// ports of their own.
func (t *Table) Allow(cidr string) error {
	p, err := netip.ParsePrefix(cidr)
	if err != nil {
		return fmt.Errorf("allow %q: %w", cidr, err)
	}
	t.allow = append(t.allow, p.Masked())
	return nil
}

// Allowed reports whether a may be dialled: an address in Telegram's
// ranges on one of Telegram's MTProto ports, an overridden DC address on
// its own port, or an address in a range added with [Table.Allow].
func (t *Table) Allowed(a netip.AddrPort) bool {
	ip := a.Addr().Unmap()
	if ip.Zone() != "" {
		return false
	}
	if t.exact[netip.AddrPortFrom(ip, a.Port())] {
		return true
	}
	for _, p := range t.allow {
		if p.Contains(ip) {
			return true
		}
	}
	if !slices.Contains(telegramPorts, a.Port()) {
		return false
	}
	for _, p := range t.telegram {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// DC returns the addresses of DC id. Media DCs (negative numbers) use the
// addresses of the matching positive DC unless the table has an entry of
// their own. Numbers outside |id| < [MaxID] are unknown.
func (t *Table) DC(id int32) ([]netip.AddrPort, error) {
	if !ValidID(id) {
		return nil, fmt.Errorf("%w: %d", ErrUnknownDC, id)
	}
	if a := t.dcs[id]; len(a) > 0 {
		return slices.Clone(a), nil
	}
	if a := t.dcs[-id]; id < 0 && len(a) > 0 {
		return slices.Clone(a), nil
	}
	return nil, fmt.Errorf("%w: %d", ErrUnknownDC, id)
}

// Resolve turns target into the addresses to try, in order, or fails with
// [ErrNotAllowed] or [ErrUnknownDC]. Domain names are resolved with r (nil
// means net.DefaultResolver) and only allowed addresses are kept.
func (t *Table) Resolve(ctx context.Context, r *net.Resolver, target transport.Target) ([]netip.AddrPort, error) {
	if target.DC != 0 {
		return t.DC(target.DC)
	}
	if ip, err := netip.ParseAddr(target.Host); err == nil {
		ap := netip.AddrPortFrom(ip, target.Port)
		if !t.Allowed(ap) {
			return nil, fmt.Errorf("%w: %s", ErrNotAllowed, target)
		}
		return []netip.AddrPort{netip.AddrPortFrom(ip.Unmap(), target.Port)}, nil
	}
	if r == nil {
		r = net.DefaultResolver
	}
	ips, err := r.LookupNetIP(ctx, "ip", target.Host)
	if err != nil {
		return nil, fmt.Errorf("resolve %s: %w", target.Host, err)
	}
	var out []netip.AddrPort
	for _, ip := range ips {
		if ap := netip.AddrPortFrom(ip.Unmap(), target.Port); t.Allowed(ap) {
			out = append(out, ap)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: %s", ErrNotAllowed, target)
	}
	return out, nil
}

// A Dialer connects streams to their targets, only within a [Table].
type Dialer struct {
	// Table is the allowed world. Required.
	Table *Table
	// Resolver resolves domain targets; nil means net.DefaultResolver.
	Resolver *net.Resolver
	// Timeout bounds each connection attempt; zero means 10 seconds.
	Timeout time.Duration
	// DialContext, if not nil, makes the connections in place of a
	// net.Dialer (tests use it to keep every "datacenter" in memory). It
	// is only ever given addresses the Table allows.
	DialContext func(ctx context.Context, network, address string) (net.Conn, error)
}

// Dial connects to target, trying its addresses in order, and returns the
// connection or the stream status that best describes the failure.
func (d *Dialer) Dial(ctx context.Context, target transport.Target) (net.Conn, transport.Status, error) {
	addrs, err := d.Table.Resolve(ctx, d.Resolver, target)
	switch {
	case errors.Is(err, ErrNotAllowed), errors.Is(err, ErrUnknownDC):
		return nil, transport.StatusNotAllowed, err
	case err != nil:
		return nil, transport.StatusUnreachable, err
	}
	timeout := d.Timeout
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	dial := d.DialContext
	if dial == nil {
		dial = (&net.Dialer{}).DialContext
	}
	var last error
	for _, a := range addrs {
		actx, cancel := context.WithTimeout(ctx, timeout)
		c, err := dial(actx, "tcp", a.String())
		cancel()
		if err == nil {
			return c, transport.StatusOK, nil
		}
		last = err
	}
	return nil, statusOf(last), fmt.Errorf("dial %s: %w", target, last)
}

func statusOf(err error) transport.Status {
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return transport.StatusRefused
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return transport.StatusTimeout
	default:
		return transport.StatusUnreachable
	}
}
