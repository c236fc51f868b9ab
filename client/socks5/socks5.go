// Package socks5 implements the server side of SOCKS version 5 (RFC 1928)
// with optional username/password authentication (RFC 1929), for the
// merpati client's local front that the Telegram app connects to.
//
// The package only parses and answers. [Handshake] negotiates the method,
// authenticates and reads the CONNECT request; the caller then connects
// wherever it likes (through a relay, in merpati) and answers with [Reply].
// Only the CONNECT command is supported: BIND and UDP ASSOCIATE are answered
// with [ReplyCommandNotSupported].
//
// [Server] is a small accept loop around [Handshake] for callers that want
// one.
package socks5

import (
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"time"
)

// Protocol constants from RFC 1928 and RFC 1929.
const (
	socksVersion = 0x05 // RFC 1928 §3, VER
	authVersion  = 0x01 // RFC 1929 §2, VER of the subnegotiation

	methodNoAuth       = 0x00 // RFC 1928 §3, NO AUTHENTICATION REQUIRED
	methodUserPass     = 0x02 // RFC 1928 §3, USERNAME/PASSWORD
	methodNoAcceptable = 0xff // RFC 1928 §3, NO ACCEPTABLE METHODS

	authSuccess = 0x00 // RFC 1929 §2, STATUS success
	authFailure = 0x01 // RFC 1929 §2, any non-zero STATUS is failure

	cmdConnect      = 0x01 // RFC 1928 §4
	cmdBind         = 0x02 // RFC 1928 §4
	cmdUDPAssociate = 0x03 // RFC 1928 §4

	atypIPv4   = 0x01 // RFC 1928 §5
	atypDomain = 0x03 // RFC 1928 §5
	atypIPv6   = 0x04 // RFC 1928 §5
)

// DefaultHandshakeTimeout is the time [Handshake] allows a client when
// [Config.HandshakeTimeout] is zero.
const DefaultHandshakeTimeout = 10 * time.Second

// Errors returned by [Handshake]. They are wrapped with context; test for
// them with [errors.Is].
var (
	// ErrVersion means the client spoke a version other than SOCKS5 (or
	// another version than 1 of the RFC 1929 subnegotiation).
	ErrVersion = errors.New("socks5: unsupported version")
	// ErrNoAcceptableMethod means the client offered no authentication
	// method the server accepts. The client was told so (method 0xFF).
	ErrNoAcceptableMethod = errors.New("socks5: no acceptable authentication method")
	// ErrAuthFailed means the username or password was wrong. The client
	// was told so (RFC 1929 status 1).
	ErrAuthFailed = errors.New("socks5: authentication failed")
	// ErrCommandNotSupported means the client asked for BIND, UDP
	// ASSOCIATE or an unknown command. The client got
	// [ReplyCommandNotSupported].
	ErrCommandNotSupported = errors.New("socks5: command not supported")
	// ErrAddressNotSupported means the request used an unknown address
	// type. The client got [ReplyAddressNotSupported].
	ErrAddressNotSupported = errors.New("socks5: address type not supported")
	// ErrBadAddress means the request named an empty domain or one with
	// bytes outside printable ASCII. The client got [ReplyGeneralFailure].
	ErrBadAddress = errors.New("socks5: malformed destination address")
)

// A ReplyCode is the REP field of a SOCKS5 reply (RFC 1928 §6).
type ReplyCode byte

// Reply codes of RFC 1928 §6.
const (
	ReplySucceeded           ReplyCode = 0x00 // succeeded
	ReplyGeneralFailure      ReplyCode = 0x01 // general SOCKS server failure
	ReplyNotAllowed          ReplyCode = 0x02 // connection not allowed by ruleset
	ReplyNetworkUnreachable  ReplyCode = 0x03 // network unreachable
	ReplyHostUnreachable     ReplyCode = 0x04 // host unreachable
	ReplyConnectionRefused   ReplyCode = 0x05 // connection refused
	ReplyTTLExpired          ReplyCode = 0x06 // TTL expired (also used for timeouts)
	ReplyCommandNotSupported ReplyCode = 0x07 // command not supported
	ReplyAddressNotSupported ReplyCode = 0x08 // address type not supported
)

// String returns the RFC 1928 description of c.
func (c ReplyCode) String() string {
	switch c {
	case ReplySucceeded:
		return "succeeded"
	case ReplyGeneralFailure:
		return "general SOCKS server failure"
	case ReplyNotAllowed:
		return "connection not allowed by ruleset"
	case ReplyNetworkUnreachable:
		return "network unreachable"
	case ReplyHostUnreachable:
		return "host unreachable"
	case ReplyConnectionRefused:
		return "connection refused"
	case ReplyTTLExpired:
		return "TTL expired"
	case ReplyCommandNotSupported:
		return "command not supported"
	case ReplyAddressNotSupported:
		return "address type not supported"
	}
	return "reply code " + strconv.Itoa(int(c))
}

// Config configures [Handshake]. The zero value accepts clients without
// authentication and uses [DefaultHandshakeTimeout].
type Config struct {
	// Users maps user names to passwords. If it is empty, no
	// authentication is required (method 0x00); a client that offers only
	// username/password (method 0x02) is still accepted, whatever
	// credentials it sends. If Users is not empty, method 0x02 is required
	// and the credentials must match an entry.
	//
	// Handshake only reads Users, so one map may be shared by concurrent
	// handshakes as long as nobody writes to it.
	Users map[string]string

	// HandshakeTimeout bounds the whole handshake, from the first byte
	// read to the request. Zero means [DefaultHandshakeTimeout]; a
	// negative value means no limit.
	HandshakeTimeout time.Duration
}

// A Request is a client's CONNECT request.
type Request struct {
	// Host is the destination: an IP address literal (without brackets)
	// if the client sent an address, or the domain name it sent. A domain
	// is never resolved here.
	Host string
	// Port is the destination port. It may be zero if the client sent
	// zero.
	Port uint16
	// User is the authenticated user name, or the name a client offered
	// to a server without [Config.Users], or "" without authentication.
	User string
}

// Addr returns the destination as "host:port", with an IPv6 host in
// brackets, ready for [net.Dial].
func (r *Request) Addr() string {
	return net.JoinHostPort(r.Host, strconv.Itoa(int(r.Port)))
}

// IsDomain reports whether the client sent a domain name rather than an IP
// address.
func (r *Request) IsDomain() bool {
	_, err := netip.ParseAddr(r.Host)
	return err != nil
}

// Handshake runs the server side of a SOCKS5 handshake on conn: method
// negotiation, authentication if cfg asks for it, and the client's request.
// It returns the CONNECT request; the caller must then answer it with
// [Reply] (usually after connecting) and relay data.
//
// Handshake reads no byte past the request, so data a client sends early
// stays in conn. On error it has already sent whatever answer the protocol
// prescribes (method 0xFF, authentication failure, reply 0x07 or 0x08) and
// the caller should close conn. Handshake sets a deadline on conn for
// [Config.HandshakeTimeout] and clears it before returning. It never
// panics on malformed input.
func Handshake(conn net.Conn, cfg Config) (*Request, error) {
	timeout := cfg.HandshakeTimeout
	if timeout == 0 {
		timeout = DefaultHandshakeTimeout
	}
	if timeout > 0 {
		if err := conn.SetDeadline(time.Now().Add(timeout)); err != nil {
			return nil, fmt.Errorf("socks5: set deadline: %w", err)
		}
		defer conn.SetDeadline(time.Time{})
	}
	user, err := negotiate(conn, cfg.Users)
	if err != nil {
		return nil, err
	}
	req, err := readRequest(conn)
	if err != nil {
		return nil, err
	}
	req.User = user
	return req, nil
}

// negotiate runs method selection (RFC 1928 §3) and, if selected, the
// username/password subnegotiation (RFC 1929). It returns the user name.
func negotiate(conn net.Conn, users map[string]string) (string, error) {
	// buf holds VER NMETHODS METHODS; NMETHODS is at most 255.
	var buf [2 + 255]byte
	if _, err := io.ReadFull(conn, buf[:2]); err != nil {
		return "", fmt.Errorf("socks5: read greeting: %w", err)
	}
	if buf[0] != socksVersion {
		return "", fmt.Errorf("%w: greeting version %d", ErrVersion, buf[0])
	}
	methods := buf[2 : 2+int(buf[1])]
	if _, err := io.ReadFull(conn, methods); err != nil {
		return "", fmt.Errorf("socks5: read methods: %w", err)
	}
	var noAuth, userPass bool
	for _, m := range methods {
		switch m {
		case methodNoAuth:
			noAuth = true
		case methodUserPass:
			userPass = true
		}
	}
	var method byte
	switch {
	case len(users) > 0 && userPass:
		method = methodUserPass
	case len(users) > 0:
		method = methodNoAcceptable
	case noAuth:
		method = methodNoAuth
	case userPass:
		// No users configured, but the client insists on a password:
		// accept any, so a Telegram proxy entry with credentials works
		// against an open local proxy.
		method = methodUserPass
	default:
		method = methodNoAcceptable
	}
	if _, err := conn.Write([]byte{socksVersion, method}); err != nil {
		return "", fmt.Errorf("socks5: write method selection: %w", err)
	}
	switch method {
	case methodNoAcceptable:
		return "", fmt.Errorf("%w: client offered %x", ErrNoAcceptableMethod, methods)
	case methodNoAuth:
		return "", nil
	}
	return authenticate(conn, users)
}

// authenticate runs the RFC 1929 subnegotiation. With no users, any
// credentials pass.
func authenticate(conn net.Conn, users map[string]string) (string, error) {
	// VER ULEN UNAME(1-255) PLEN PASSWD(1-255). Lengths of zero are
	// tolerated; they simply never match a configured user.
	var buf [255]byte
	if _, err := io.ReadFull(conn, buf[:2]); err != nil {
		return "", fmt.Errorf("socks5: read auth header: %w", err)
	}
	if buf[0] != authVersion {
		return "", fmt.Errorf("%w: auth version %d", ErrVersion, buf[0])
	}
	name := buf[:buf[1]]
	if _, err := io.ReadFull(conn, name); err != nil {
		return "", fmt.Errorf("socks5: read user name: %w", err)
	}
	user := string(name)
	if _, err := io.ReadFull(conn, buf[:1]); err != nil {
		return "", fmt.Errorf("socks5: read password length: %w", err)
	}
	pass := buf[:buf[0]]
	if _, err := io.ReadFull(conn, pass); err != nil {
		return "", fmt.Errorf("socks5: read password: %w", err)
	}
	ok := true
	if len(users) > 0 {
		want, found := users[user]
		// Compare in constant time so the answer's timing does not
		// reveal how much of a password was right.
		ok = subtle.ConstantTimeCompare([]byte(want), pass) == 1 && found
	}
	status := byte(authSuccess)
	if !ok {
		status = authFailure
	}
	if _, err := conn.Write([]byte{authVersion, status}); err != nil {
		return "", fmt.Errorf("socks5: write auth status: %w", err)
	}
	if !ok {
		return "", fmt.Errorf("%w for user %q", ErrAuthFailed, user)
	}
	return user, nil
}

// readRequest reads the request of RFC 1928 §4 and answers the ones it
// refuses.
func readRequest(conn net.Conn) (*Request, error) {
	// VER CMD RSV ATYP, then at most 1+255 address bytes and 2 port bytes.
	var buf [4 + 1 + 255 + 2]byte
	if _, err := io.ReadFull(conn, buf[:4]); err != nil {
		return nil, fmt.Errorf("socks5: read request: %w", err)
	}
	if buf[0] != socksVersion {
		return nil, fmt.Errorf("%w: request version %d", ErrVersion, buf[0])
	}
	cmd := buf[1]
	// buf[2] is RSV; RFC 1928 says it must be 0, but nothing depends on
	// it, so it is ignored for the sake of sloppy clients.
	var req Request
	switch atyp := buf[3]; atyp {
	case atypIPv4, atypIPv6:
		n := 4
		if atyp == atypIPv6 {
			n = 16
		}
		b := buf[4 : 4+n+2]
		if _, err := io.ReadFull(conn, b); err != nil {
			return nil, fmt.Errorf("socks5: read address: %w", err)
		}
		addr, _ := netip.AddrFromSlice(b[:n])
		req.Host = addr.String()
		req.Port = uint16(b[n])<<8 | uint16(b[n+1])
	case atypDomain:
		if _, err := io.ReadFull(conn, buf[4:5]); err != nil {
			return nil, fmt.Errorf("socks5: read domain length: %w", err)
		}
		n := int(buf[4])
		b := buf[5 : 5+n+2]
		if _, err := io.ReadFull(conn, b); err != nil {
			return nil, fmt.Errorf("socks5: read domain: %w", err)
		}
		req.Host = string(b[:n])
		req.Port = uint16(b[n])<<8 | uint16(b[n+1])
		if !printableDomain(req.Host) {
			return nil, refuse(conn, ReplyGeneralFailure, fmt.Errorf("%w: domain %q", ErrBadAddress, req.Host))
		}
	default:
		return nil, refuse(conn, ReplyAddressNotSupported, fmt.Errorf("%w: %d", ErrAddressNotSupported, atyp))
	}
	if cmd != cmdConnect {
		return nil, refuse(conn, ReplyCommandNotSupported, fmt.Errorf("%w: %s", ErrCommandNotSupported, commandName(cmd)))
	}
	return &req, nil
}

// refuse sends a failure reply and returns err, joined with any write
// error.
func refuse(conn net.Conn, code ReplyCode, err error) error {
	if werr := Reply(conn, code, nil); werr != nil {
		return fmt.Errorf("%w (%w)", err, werr)
	}
	return err
}

// printableDomain reports whether s is non-empty printable ASCII without
// spaces. Anything else in a domain can only be an attack or a bug, and
// would end up in logs.
func printableDomain(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] > '~' {
			return false
		}
	}
	return true
}

// commandName names a request command for error messages.
func commandName(cmd byte) string {
	switch cmd {
	case cmdBind:
		return "BIND"
	case cmdUDPAssociate:
		return "UDP ASSOCIATE"
	}
	return "command " + strconv.Itoa(int(cmd))
}

// Reply writes a SOCKS5 reply (RFC 1928 §6) with the given code to w in a
// single Write. bound is the address the server bound for the connection
// (BND.ADDR and BND.PORT); [*net.TCPAddr], [*net.UDPAddr] and any Addr
// whose String is an "ip:port" are understood, and nil or anything else is
// sent as 0.0.0.0:0, which clients accept. IPv4-mapped IPv6 addresses are
// sent as IPv4.
func Reply(w io.Writer, code ReplyCode, bound net.Addr) error {
	ap := addrPort(bound)
	ip := ap.Addr().Unmap()
	b := make([]byte, 0, 4+16+2)
	b = append(b, socksVersion, byte(code), 0x00)
	if ip.Is6() {
		b = append(b, atypIPv6)
	} else {
		b = append(b, atypIPv4)
	}
	if !ip.IsValid() {
		ip = netip.IPv4Unspecified()
	}
	b = append(b, ip.AsSlice()...)
	b = append(b, byte(ap.Port()>>8), byte(ap.Port()))
	if _, err := w.Write(b); err != nil {
		return fmt.Errorf("socks5: write reply: %w", err)
	}
	return nil
}

// addrPort extracts an IP and port from a, or returns the zero AddrPort.
func addrPort(a net.Addr) netip.AddrPort {
	switch a := a.(type) {
	case nil:
		return netip.AddrPort{}
	case *net.TCPAddr:
		if a == nil {
			return netip.AddrPort{}
		}
		return a.AddrPort()
	case *net.UDPAddr:
		if a == nil {
			return netip.AddrPort{}
		}
		return a.AddrPort()
	}
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return netip.AddrPort{}
	}
	return ap
}
