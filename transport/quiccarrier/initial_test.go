package quiccarrier

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"sync"

	"github.com/merpati/merpati/transport/hello"
)

// initialSaltV1 is the QUIC version 1 Initial salt (RFC 9001 section 5.2).
var initialSaltV1 = []byte{0x38, 0x76, 0x2c, 0xf7, 0xf5, 0x59, 0x34, 0xb3, 0x4d, 0x17, 0x9a, 0xe6, 0xa4, 0xc8, 0x0c, 0xad, 0xcc, 0xbb, 0x7f, 0x0a}

// expandLabel is HKDF-Expand-Label of TLS 1.3 (RFC 8446 section 7.1) with
// an empty context.
func expandLabel(secret []byte, label string, n int) []byte {
	full := "tls13 " + label
	info := []byte{byte(n >> 8), byte(n), byte(len(full))}
	info = append(info, full...)
	info = append(info, 0)
	out, err := hkdf.Expand(sha256.New, secret, string(info), n)
	if err != nil {
		panic(err)
	}
	return out
}

// initialKeys are a client's Initial packet protection keys.
type initialKeys struct {
	aead cipher.AEAD
	iv   []byte
	hp   cipher.Block
}

func newInitialKeys(dcid []byte) *initialKeys {
	prk, err := hkdf.Extract(sha256.New, dcid, initialSaltV1)
	if err != nil {
		panic(err)
	}
	secret := expandLabel(prk, "client in", 32)
	block, _ := aes.NewCipher(expandLabel(secret, "quic key", 16))
	aead, _ := cipher.NewGCM(block)
	hp, _ := aes.NewCipher(expandLabel(secret, "quic hp", 16))
	return &initialKeys{aead: aead, iv: expandLabel(secret, "quic iv", 12), hp: hp}
}

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

// helloCollector reassembles the ClientHello from the CRYPTO frames of a
// client's Initial packets (RFC 9000 sections 17.2.2 and 19.6, RFC 9001
// section 5), as tshark does.
type helloCollector struct {
	keys   *initialKeys
	crypto []byte
	have   []bool
	// Datagrams lists the sizes of the datagrams that carried Initials.
	Datagrams []int
}

// add processes one datagram from the client.
func (c *helloCollector) add(d []byte) error {
	c.Datagrams = append(c.Datagrams, len(d))
	for len(d) > 0 && d[0]&0x80 != 0 {
		if len(d) < 7 {
			return errors.New("short long header")
		}
		typ := (d[0] & 0x30) >> 4
		if binary.BigEndian.Uint32(d[1:5]) != 1 {
			return fmt.Errorf("version %#x", d[1:5])
		}
		p := 5
		dl := int(d[p])
		p++
		if len(d) < p+dl+1 {
			return errors.New("short dcid")
		}
		dcid := d[p : p+dl]
		p += dl
		sl := int(d[p])
		p += 1 + sl
		if typ != 0 {
			return nil // not Initial: the hello is done
		}
		tl, n, err := readVarint(d[p:])
		if err != nil {
			return err
		}
		p += n + int(tl)
		length, n, err := readVarint(d[p:])
		if err != nil {
			return err
		}
		p += n
		if c.keys == nil {
			c.keys = newInitialKeys(dcid)
		}
		if len(d) < p+int(length) || length < 20 {
			return errors.New("short packet")
		}
		pkt := append([]byte(nil), d[:p+int(length)]...)
		mask := make([]byte, 16)
		c.keys.hp.Encrypt(mask, pkt[p+4:p+20])
		pkt[0] ^= mask[0] & 0x0f
		pnLen := int(pkt[0]&3) + 1
		var pn uint64
		for i := range pnLen {
			pkt[p+i] ^= mask[1+i]
			pn = pn<<8 | uint64(pkt[p+i])
		}
		nonce := append([]byte(nil), c.keys.iv...)
		for i := range 8 {
			nonce[len(nonce)-1-i] ^= byte(pn >> (8 * i))
		}
		payload, err := c.keys.aead.Open(nil, nonce, pkt[p+pnLen:], pkt[:p+pnLen])
		if err != nil {
			return fmt.Errorf("decrypt initial: %w", err)
		}
		if err := c.frames(payload); err != nil {
			return err
		}
		d = d[p+int(length):]
	}
	return nil
}

func (c *helloCollector) frames(b []byte) error {
	for len(b) > 0 {
		switch b[0] {
		case 0x00, 0x01: // PADDING, PING
			b = b[1:]
		case 0x06: // CRYPTO
			b = b[1:]
			off, n, err := readVarint(b)
			if err != nil {
				return err
			}
			b = b[n:]
			l, n, err := readVarint(b)
			if err != nil {
				return err
			}
			b = b[n:]
			if uint64(len(b)) < l || off+l > 1<<16 {
				return errors.New("bad CRYPTO frame")
			}
			if end := int(off + l); end > len(c.crypto) {
				c.crypto = append(c.crypto, make([]byte, end-len(c.crypto))...)
				c.have = append(c.have, make([]bool, end-len(c.have))...)
			}
			copy(c.crypto[off:], b[:l])
			for i := off; i < off+l; i++ {
				c.have[i] = true
			}
			b = b[l:]
		default:
			return fmt.Errorf("unexpected frame type %#x in a client Initial", b[0])
		}
	}
	return nil
}

// hello returns the ClientHello once all its bytes have arrived, as a
// TLS record for [hello.Parse].
func (c *helloCollector) hello() (*hello.ClientHello, []byte, bool) {
	if len(c.crypto) < 4 {
		return nil, nil, false
	}
	n := 4 + (int(c.crypto[1])<<16 | int(c.crypto[2])<<8 | int(c.crypto[3]))
	if len(c.crypto) < n {
		return nil, nil, false
	}
	for _, ok := range c.have[:n] {
		if !ok {
			return nil, nil, false
		}
	}
	msg := c.crypto[:n]
	rec := append([]byte{22, 3, 1, byte(n >> 8), byte(n)}, msg...)
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
