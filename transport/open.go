package transport

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"
)

// Version is the version byte that starts every [OpenRequest] and
// [OpenReply]. A peer that reads another value closes the stream.
const Version = 1

// MaxPadding is the largest padding either open message may carry.
const MaxPadding = 1024

// Target kinds on the wire.
const (
	kindDC     = 1
	kindIPv4   = 2
	kindIPv6   = 3
	kindDomain = 4
)

// Errors returned when decoding open messages.
var (
	// ErrVersion means the message does not start with [Version].
	ErrVersion = errors.New("transport: unknown stream protocol version")
	// ErrTarget means the target is malformed (bad kind, empty or
	// invalid domain name, zero port).
	ErrTarget = errors.New("transport: malformed target")
	// ErrPadding means the padding is longer than [MaxPadding].
	ErrPadding = errors.New("transport: padding too long")
)

// A Target names where a stream goes: either a Telegram datacenter by number
// (DC != 0), or a host and port. The relay decides whether it may dial it.
type Target struct {
	// DC is a Telegram datacenter number: 1-5 and 203 for production,
	// negative for media DCs, 10000+N for test DCs. Zero means Host and
	// Port name the target instead.
	DC int32
	// Host is an IP address literal or a domain name. Unused when DC != 0.
	Host string
	// Port is the TCP port. Unused when DC != 0.
	Port uint16
}

// DCTarget returns the target for Telegram datacenter dc.
func DCTarget(dc int32) Target { return Target{DC: dc} }

// AddrTarget returns the target for host:port, where host is an IP
// literal or a domain name.
func AddrTarget(host string, port uint16) Target { return Target{Host: host, Port: port} }

// String formats t as "dc:N" or as host:port.
func (t Target) String() string {
	if t.DC != 0 {
		return "dc:" + strconv.Itoa(int(t.DC))
	}
	return joinHostPort(t.Host, t.Port)
}

func joinHostPort(host string, port uint16) string {
	if strings.IndexByte(host, ':') >= 0 {
		return "[" + host + "]:" + strconv.Itoa(int(port))
	}
	return host + ":" + strconv.Itoa(int(port))
}

// validDomain reports whether s can be sent as a domain target: 1-255
// bytes of printable ASCII with no spaces, as SOCKS5 (RFC 1928 section 5)
// carries it.
func validDomain(s string) bool {
	if len(s) == 0 || len(s) > 255 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] >= 0x7f {
			return false
		}
	}
	return true
}

// An OpenRequest is the first message on a stream, from client to relay.
type OpenRequest struct {
	Target Target
	// Padding is sent and ignored, to blur the size of stream openings.
	Padding int
}

// AppendBinary appends the wire form of r to b.
//
//	version(1) kind(1) target padlen(2) padding
//	target = dc int32 | ipv4(4) port(2) | ipv6(16) port(2) | len(1) name port(2)
func (r OpenRequest) AppendBinary(b []byte) ([]byte, error) {
	if r.Padding < 0 || r.Padding > MaxPadding {
		return b, ErrPadding
	}
	b = append(b, Version)
	t := r.Target
	switch {
	case t.DC != 0:
		b = append(b, kindDC)
		b = binary.BigEndian.AppendUint32(b, uint32(t.DC))
	default:
		if t.Port == 0 {
			return b, fmt.Errorf("%w: zero port", ErrTarget)
		}
		if ip, err := netip.ParseAddr(t.Host); err == nil && ip.Zone() == "" {
			ip = ip.Unmap()
			if ip.Is4() {
				b = append(b, kindIPv4)
			} else {
				b = append(b, kindIPv6)
			}
			b = append(b, ip.AsSlice()...)
		} else {
			if !validDomain(t.Host) {
				return b, fmt.Errorf("%w: bad host %q", ErrTarget, t.Host)
			}
			b = append(b, kindDomain, byte(len(t.Host)))
			b = append(b, t.Host...)
		}
		b = binary.BigEndian.AppendUint16(b, t.Port)
	}
	b = binary.BigEndian.AppendUint16(b, uint16(r.Padding))
	return append(b, make([]byte, r.Padding)...), nil
}

// WriteTo writes r to w in one Write call.
func (r OpenRequest) WriteTo(w io.Writer) (int64, error) {
	b, err := r.AppendBinary(make([]byte, 0, 32+r.Padding))
	if err != nil {
		return 0, err
	}
	n, err := w.Write(b)
	return int64(n), err
}

// ReadOpenRequest reads one [OpenRequest] from r. It reads exactly the
// message and nothing after it.
func ReadOpenRequest(r io.Reader) (OpenRequest, error) {
	var req OpenRequest
	var hdr [2]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return req, fmt.Errorf("read open request: %w", err)
	}
	if hdr[0] != Version {
		return req, ErrVersion
	}
	var body []byte
	switch hdr[1] {
	case kindDC:
		body = make([]byte, 4)
	case kindIPv4:
		body = make([]byte, 4+2)
	case kindIPv6:
		body = make([]byte, 16+2)
	case kindDomain:
		var n [1]byte
		if _, err := io.ReadFull(r, n[:]); err != nil {
			return req, fmt.Errorf("read open request: %w", err)
		}
		body = make([]byte, int(n[0])+2)
	default:
		return req, fmt.Errorf("%w: kind %d", ErrTarget, hdr[1])
	}
	if _, err := io.ReadFull(r, body); err != nil {
		return req, fmt.Errorf("read open request: %w", err)
	}
	switch hdr[1] {
	case kindDC:
		req.Target.DC = int32(binary.BigEndian.Uint32(body))
		if req.Target.DC == 0 {
			return req, fmt.Errorf("%w: dc 0", ErrTarget)
		}
	case kindIPv4, kindIPv6:
		ip, _ := netip.AddrFromSlice(body[:len(body)-2])
		req.Target.Host = ip.Unmap().String()
	case kindDomain:
		req.Target.Host = string(body[:len(body)-2])
		if !validDomain(req.Target.Host) {
			return req, fmt.Errorf("%w: bad domain", ErrTarget)
		}
		// An IP literal sent as a name is the same target as the address.
		if ip, err := netip.ParseAddr(req.Target.Host); err == nil && ip.Zone() == "" {
			req.Target.Host = ip.Unmap().String()
		}
	}
	if hdr[1] != kindDC {
		req.Target.Port = binary.BigEndian.Uint16(body[len(body)-2:])
		if req.Target.Port == 0 {
			return req, fmt.Errorf("%w: zero port", ErrTarget)
		}
	}
	pad, err := readPadding(r)
	req.Padding = pad
	return req, err
}

func readPadding(r io.Reader) (int, error) {
	var n [2]byte
	if _, err := io.ReadFull(r, n[:]); err != nil {
		return 0, fmt.Errorf("read padding: %w", err)
	}
	pad := int(binary.BigEndian.Uint16(n[:]))
	if pad > MaxPadding {
		return 0, ErrPadding
	}
	if _, err := io.CopyN(io.Discard, r, int64(pad)); err != nil {
		return 0, fmt.Errorf("read padding: %w", err)
	}
	return pad, nil
}

// A Status is the relay's answer to an [OpenRequest].
type Status byte

// Statuses. Values other than StatusOK mean the relay closes the stream
// after the reply. Each limit of an access key has its own status, so a
// client (and its user) can tell which one was hit.
const (
	StatusOK             Status = 0 // connected; bytes follow
	StatusFailure        Status = 1 // unspecified relay failure
	StatusNotAllowed     Status = 2 // target is not a Telegram datacenter
	StatusUnreachable    Status = 3 // network or host unreachable
	StatusRefused        Status = 4 // connection refused by the target
	StatusTimeout        Status = 5 // target did not answer in time
	StatusQuota          Status = 6 // the access key is over its byte quota
	StatusBadRequest     Status = 7 // the open request was malformed, or too much data came before the reply
	StatusTooManyStreams Status = 8 // the access key has as many open streams as its stream limit allows
	StatusTooManyDials   Status = 9 // too many of the access key's streams are already waiting on a dial
)

var statusText = [...]string{
	StatusOK:             "ok",
	StatusFailure:        "relay failure",
	StatusNotAllowed:     "target not allowed (not a Telegram datacenter)",
	StatusUnreachable:    "target unreachable",
	StatusRefused:        "connection refused by target",
	StatusTimeout:        "target timed out",
	StatusQuota:          "access key over its byte quota",
	StatusBadRequest:     "malformed open request",
	StatusTooManyStreams: "access key at its limit of open streams",
	StatusTooManyDials:   "access key has too many streams waiting on a dial",
}

// String describes s.
func (s Status) String() string {
	if int(s) < len(statusText) {
		return statusText[s]
	}
	return "status " + strconv.Itoa(int(s))
}

// A StatusError is returned by [ReadOpenReply] when the relay refused the
// stream.
type StatusError struct{ Status Status }

// Error implements error.
func (e *StatusError) Error() string { return "relay refused stream: " + e.Status.String() }

// An OpenReply is the relay's first message on a stream.
type OpenReply struct {
	Status  Status
	Padding int
}

// AppendBinary appends the wire form of r: version(1) status(1) padlen(2)
// padding.
func (r OpenReply) AppendBinary(b []byte) ([]byte, error) {
	if r.Padding < 0 || r.Padding > MaxPadding {
		return b, ErrPadding
	}
	b = append(b, Version, byte(r.Status))
	b = binary.BigEndian.AppendUint16(b, uint16(r.Padding))
	return append(b, make([]byte, r.Padding)...), nil
}

// WriteTo writes r to w in one Write call.
func (r OpenReply) WriteTo(w io.Writer) (int64, error) {
	b, err := r.AppendBinary(make([]byte, 0, 4+r.Padding))
	if err != nil {
		return 0, err
	}
	n, err := w.Write(b)
	return int64(n), err
}

// ReadOpenReply reads one [OpenReply] from r. A reply with a status other
// than [StatusOK] is returned together with a *[StatusError].
func ReadOpenReply(r io.Reader) (OpenReply, error) {
	var rep OpenReply
	var hdr [2]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return rep, fmt.Errorf("read open reply: %w", err)
	}
	if hdr[0] != Version {
		return rep, ErrVersion
	}
	rep.Status = Status(hdr[1])
	pad, err := readPadding(r)
	if err != nil {
		return rep, err
	}
	rep.Padding = pad
	if rep.Status != StatusOK {
		return rep, &StatusError{rep.Status}
	}
	return rep, nil
}
