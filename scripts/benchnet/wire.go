package main

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Modes of the fake datacenter, the first byte of a connection's header.
const (
	modeDown = 'd' // the DC sends the length's bytes and closes its side
	modeUp   = 'u' // the DC receives the length's bytes and acknowledges
	modeEcho = 'e' // the DC echoes everything until EOF
)

// headerLen is the length of the header a fake DC reads first.
const headerLen = 8

// ackLen is the length of the packet a fake DC acknowledges an upload
// with: long enough (at least 17 bytes) that the relay's MTProxy mode
// sends it on at once rather than holding it for more.
const ackLen = 20

// openEchoLen is the packet echoed to check a newly opened stream.
const openEchoLen = 20

// rttLen is the packet echoed by each round trip.
const rttLen = 100

// header returns a fake DC's header for mode and n bytes.
func header(mode byte, n int64) []byte {
	var h [headerLen]byte
	binary.BigEndian.PutUint64(h[:], uint64(n))
	h[0] = mode
	return h[:]
}

// parseHeader splits a fake DC's header.
func parseHeader(h []byte) (mode byte, n int64) {
	v := binary.BigEndian.Uint64(h)
	return h[0], int64(v & (1<<56 - 1))
}

// packet returns an n-byte MTProto intermediate packet (a 4-byte
// little-endian length, then n-4 bytes), n >= 4.
func packet(n int) []byte {
	p := make([]byte, n)
	binary.LittleEndian.PutUint32(p, uint32(n-4))
	for i := 4; i < n; i++ {
		p[i] = byte(i)
	}
	return p
}

// echo asks the fake DC at the end of s to echo, sends it pkt and reads
// pkt back: what a new stream or an idle session carries first.
func echo(s io.ReadWriter, pkt []byte) error {
	if _, err := s.Write(append(header(modeEcho, 0), pkt...)); err != nil {
		return err
	}
	got := make([]byte, len(pkt))
	if _, err := io.ReadFull(s, got); err != nil {
		return err
	}
	if !bytes.Equal(got, pkt) {
		return errors.New("echo differs")
	}
	return nil
}

// sizeValue is a byte count flag that takes plain numbers and KiB, MiB,
// GiB (and KB, MB, GB) suffixes.
type sizeValue int64

func (s *sizeValue) String() string { return formatSize(int64(*s)) }

func (s *sizeValue) Set(v string) error {
	n, err := parseSize(v)
	if err != nil {
		return err
	}
	*s = sizeValue(n)
	return nil
}

// parseSize parses a byte count such as 65536, 64KiB, 10MiB or 1GiB.
func parseSize(v string) (int64, error) {
	units := []struct {
		suffix string
		mult   int64
	}{
		{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30},
		{"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"B", 1},
	}
	mult := int64(1)
	num := strings.TrimSpace(v)
	for _, u := range units {
		if strings.HasSuffix(num, u.suffix) {
			mult, num = u.mult, strings.TrimSpace(strings.TrimSuffix(num, u.suffix))
			break
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n <= 0 || n > (1<<55)/mult {
		return 0, fmt.Errorf("size %q: want a positive number of bytes, such as 65536, 64KiB, 10MiB or 1GiB", v)
	}
	return n * mult, nil
}

// formatSize formats n bytes with the largest binary unit that divides it.
func formatSize(n int64) string {
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if n >= u.mult && n%u.mult == 0 {
			return fmt.Sprintf("%d%s", n/u.mult, u.suffix)
		}
	}
	return strconv.FormatInt(n, 10)
}

// A closeWriter can end its write side alone.
type closeWriter interface{ CloseWrite() error }

// pump copies src to dst, bufSize bytes at a time, and half-closes dst at
// src's EOF. It calls Read and Write itself, never io.Copy: on two TCP
// connections that would splice(2) inside the kernel, which none of the
// paths compared can do.
func pump(dst io.Writer, src io.Reader, buf []byte) error {
	for {
		n, rerr := src.Read(buf)
		if n > 0 {
			if _, err := dst.Write(buf[:n]); err != nil {
				return err
			}
		}
		if rerr != nil {
			if errors.Is(rerr, io.EOF) {
				if cw, ok := dst.(closeWriter); ok {
					return cw.CloseWrite()
				}
				return nil
			}
			return rerr
		}
	}
}

// forward copies between a and b in both directions with bufSize-byte
// buffers until both directions have ended or one fails, and closes both.
func forward(a, b io.ReadWriteCloser, bufSize int) {
	var wg sync.WaitGroup
	var once sync.Once
	abort := func() {
		once.Do(func() {
			a.Close()
			b.Close()
		})
	}
	half := func(dst, src io.ReadWriteCloser) {
		defer wg.Done()
		if err := pump(dst, src, make([]byte, bufSize)); err != nil {
			abort()
		}
	}
	wg.Add(2)
	go half(a, b)
	go half(b, a)
	wg.Wait()
	abort()
}

// socksDial opens a connection to target through the SOCKS5 proxy at
// proxy (no authentication, CONNECT to an IPv4 address), as an app does:
// greeting, then the request, each awaiting its answer.
func socksDial(proxy, target string) (*net.TCPConn, error) {
	ap, err := parseIP4Port(target)
	if err != nil {
		return nil, err
	}
	c, err := net.DialTimeout("tcp", proxy, 10*time.Second)
	if err != nil {
		return nil, fmt.Errorf("socks5 %s: %w", proxy, err)
	}
	tc := c.(*net.TCPConn)
	fail := func(err error) (*net.TCPConn, error) {
		tc.Close()
		return nil, fmt.Errorf("socks5 %s: %w", proxy, err)
	}
	tc.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := tc.Write([]byte{5, 1, 0}); err != nil {
		return fail(err)
	}
	var r [10]byte
	if _, err := io.ReadFull(tc, r[:2]); err != nil {
		return fail(err)
	}
	if r[0] != 5 || r[1] != 0 {
		return fail(fmt.Errorf("greeting answered %x", r[:2]))
	}
	req := []byte{5, 1, 0, 1, 0, 0, 0, 0, 0, 0}
	copy(req[4:8], ap.ip[:])
	binary.BigEndian.PutUint16(req[8:], ap.port)
	if _, err := tc.Write(req); err != nil {
		return fail(err)
	}
	if _, err := io.ReadFull(tc, r[:]); err != nil {
		return fail(err)
	}
	if r[1] != 0 {
		return fail(fmt.Errorf("CONNECT %s refused with reply %d", target, r[1]))
	}
	if r[3] != 1 {
		return fail(fmt.Errorf("CONNECT reply with address type %d (want IPv4)", r[3]))
	}
	tc.SetDeadline(time.Time{})
	return tc, nil
}

type ip4Port struct {
	ip   [4]byte
	port uint16
}

func parseIP4Port(s string) (ip4Port, error) {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return ip4Port{}, err
	}
	ip := net.ParseIP(host).To4()
	p, perr := strconv.ParseUint(port, 10, 16)
	if ip == nil || perr != nil {
		return ip4Port{}, fmt.Errorf("address %q: want IPv4:port", s)
	}
	var a ip4Port
	copy(a.ip[:], ip)
	a.port = uint16(p)
	return a, nil
}

// writeCert makes a self-signed ECDSA P-256 certificate for name (the
// relay's kind with --offline) and writes it and its key as PEM files
// cert and key.
func writeCert(cert, key, name string) error {
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: name},
		DNSNames:     []string{name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(30 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &priv.PublicKey, priv)
	if err != nil {
		return err
	}
	kder, err := x509.MarshalECPrivateKey(priv)
	if err != nil {
		return err
	}
	if err := os.WriteFile(cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		return err
	}
	return os.WriteFile(key, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600)
}

// spkiPin returns the hex SHA-256 of the SubjectPublicKeyInfo of the
// certificate in cert, a PEM file.
func spkiPin(cert string) (string, error) {
	b, err := os.ReadFile(cert)
	if err != nil {
		return "", err
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return "", fmt.Errorf("%s: no PEM block", cert)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		return "", fmt.Errorf("%s: %w", cert, err)
	}
	sum := sha256.Sum256(c.RawSubjectPublicKeyInfo)
	return hex.EncodeToString(sum[:]), nil
}

// pinnedConfig returns a client TLS config that accepts only a
// certificate whose SubjectPublicKeyInfo hashes to pin (hex), as merpati
// pins its relay's: no chain is built or checked.
func pinnedConfig(pin, serverName string, nextProtos ...string) (*tls.Config, error) {
	want, err := hex.DecodeString(pin)
	if err != nil || len(want) != sha256.Size {
		return nil, fmt.Errorf("pin %q: want 64 hex digits", pin)
	}
	return &tls.Config{
		ServerName:         serverName,
		NextProtos:         nextProtos,
		InsecureSkipVerify: true,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			if len(raw) == 0 {
				return errors.New("no certificate")
			}
			c, err := x509.ParseCertificate(raw[0])
			if err != nil {
				return err
			}
			if sum := sha256.Sum256(c.RawSubjectPublicKeyInfo); string(sum[:]) != string(want) {
				return errors.New("certificate does not match the pin")
			}
			return nil
		},
	}, nil
}

// serverConfig returns a server TLS config with the certificate in the
// PEM files cert and key, and no session tickets: every handshake is a
// full one, as every carrier session's is.
func serverConfig(cert, key string, nextProtos ...string) (*tls.Config, error) {
	pair, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		return nil, fmt.Errorf("load certificate: %w", err)
	}
	return &tls.Config{
		Certificates:           []tls.Certificate{pair},
		NextProtos:             nextProtos,
		SessionTicketsDisabled: true,
		MinVersion:             tls.VersionTLS13,
	}, nil
}
