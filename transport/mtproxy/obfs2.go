package mtproxy

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"

	"github.com/merpati/merpati/transport"
)

// InitLen is the length of an obfuscated2 init.
const InitLen = 64

// A Protocol is the MTProto transport tag an obfuscated2 init carries in
// bytes 56-59 (core.telegram.org/mtproto/mtproto-transports).
type Protocol [4]byte

// The MTProto transports an obfuscated2 init may name.
var (
	// Abridged is the abridged transport (0xef × 4).
	Abridged = Protocol{0xef, 0xef, 0xef, 0xef}
	// Intermediate is the intermediate transport (0xee × 4).
	Intermediate = Protocol{0xee, 0xee, 0xee, 0xee}
	// PaddedIntermediate is the padded intermediate transport (0xdd × 4),
	// which apps use with "dd" and "ee" secrets.
	PaddedIntermediate = Protocol{0xdd, 0xdd, 0xdd, 0xdd}
)

// Valid reports whether p is one of the three known transports.
func (p Protocol) Valid() bool {
	return p == Abridged || p == Intermediate || p == PaddedIntermediate
}

// ErrInit means an obfuscated2 init does not decrypt to a known transport
// tag: a wrong secret, or not obfuscated2 at all.
var ErrInit = errors.New("mtproxy: bad obfuscated2 init")

// An Init is what an obfuscated2 init announces.
type Init struct {
	// Protocol is the MTProto transport that follows.
	Protocol Protocol
	// DC is the datacenter number: negative for media DCs, 10000+N for
	// test DCs as apps send them. It is 16 bits on the wire.
	DC int
}

// Ciphers are the AES-256-CTR streams of one end of an obfuscated2
// connection: Enc for the bytes it sends, Dec for the bytes it receives.
type Ciphers struct {
	Enc, Dec cipher.Stream
}

// NewInit makes an obfuscated2 init as a client does (an app to its proxy,
// or a proxy to a datacenter) and returns it with the client's ciphers,
// which have already consumed the init. secret is the 16-byte key of a
// proxy secret, or nil towards a datacenter. rand supplies 64 bytes or
// more; inits whose first bytes could be mistaken for another transport or
// for HTTP are drawn again, as the apps do.
func NewInit(rand io.Reader, p Protocol, dc int, secret []byte) (init [InitLen]byte, c Ciphers, err error) {
	if !p.Valid() {
		return init, c, fmt.Errorf("%w: unknown protocol %x", ErrInit, p[:])
	}
	if dc < -1<<15 || dc >= 1<<15 {
		return init, c, fmt.Errorf("%w: DC %d out of range", ErrInit, dc)
	}
	for {
		if _, err := io.ReadFull(rand, init[:]); err != nil {
			return init, c, fmt.Errorf("obfuscated2 init: %w", err)
		}
		if usableInit(init[:]) {
			break
		}
	}
	copy(init[56:60], p[:])
	binary.LittleEndian.PutUint16(init[60:62], uint16(int16(dc)))
	enc, dec := initCiphers(init[:], secret)
	// The last 8 bytes go out encrypted; the first 56 stay plain (they
	// are the key material). Encrypting the whole init advances Enc past
	// it, as the peer's Dec will be.
	var encrypted [InitLen]byte
	enc.XORKeyStream(encrypted[:], init[:])
	copy(init[56:], encrypted[56:])
	return init, Ciphers{Enc: enc, Dec: dec}, nil
}

// usableInit reports whether a random init can be sent: it must not start
// like the abridged, intermediate or padded transports, HTTP, or a TLS
// record, and its second word must not be zero
// (core.telegram.org/mtproto/mtproto-transports#transport-obfuscation).
func usableInit(b []byte) bool {
	if b[0] == 0xef {
		return false
	}
	switch binary.LittleEndian.Uint32(b[0:4]) {
	case 0x44414548, 0x54534f50, 0x20544547, 0x4954504f, // HEAD POST GET OPTI
		0x02010316, 0xdddddddd, 0xeeeeeeee:
		return false
	}
	return binary.LittleEndian.Uint32(b[4:8]) != 0
}

// AcceptInit reads a client's obfuscated2 init as a proxy or datacenter
// does and returns what it announces and the server's ciphers (already
// past the init). secret is the 16-byte key the client used, or nil. An
// init whose transport tag does not decrypt to a known [Protocol] fails
// with [ErrInit]: that is how a wrong secret shows.
func AcceptInit(init [InitLen]byte, secret []byte) (Init, Ciphers, error) {
	cEnc, cDec := initCiphers(init[:], secret)
	// The server decrypts with the client's encryption stream and
	// encrypts with the client's decryption stream.
	var plain [InitLen]byte
	cEnc.XORKeyStream(plain[:], init[:])
	var in Init
	copy(in.Protocol[:], plain[56:60])
	in.DC = int(int16(binary.LittleEndian.Uint16(plain[60:62])))
	if !in.Protocol.Valid() {
		return Init{}, Ciphers{}, fmt.Errorf("%w: transport tag %x", ErrInit, plain[56:60])
	}
	return in, Ciphers{Enc: cDec, Dec: cEnc}, nil
}

// initCiphers derives the client's two streams from an init. The sending
// key and IV are bytes 8-40 and 40-56; the receiving ones are the same 48
// bytes reversed. With a secret each key becomes SHA-256(key ‖ secret).
func initCiphers(init, secret []byte) (enc, dec cipher.Stream) {
	var rev [48]byte
	for i := range rev {
		rev[i] = init[55-i]
	}
	encKey, encIV := init[8:40], init[40:56]
	decKey, decIV := rev[:32], rev[32:48]
	if len(secret) > 0 {
		h := sha256.New()
		h.Write(encKey)
		h.Write(secret)
		encKey = h.Sum(nil)
		h.Reset()
		h.Write(decKey)
		h.Write(secret)
		decKey = h.Sum(nil)
	}
	return newCTR(encKey, encIV), newCTR(decKey, decIV)
}

func newCTR(key, iv []byte) cipher.Stream {
	b, err := aes.NewCipher(key)
	if err != nil {
		panic(err) // unreachable: the key is always 32 bytes
	}
	return cipher.NewCTR(b, iv)
}

// An ObfsConn applies obfuscated2 ciphers to a connection: bytes written
// are encrypted with Enc, bytes read decrypted with Dec. The init must
// already have been exchanged.
//
// Reads and writes may run concurrently with each other, but not with
// themselves, as with any net.Conn carrying a stream cipher.
type ObfsConn struct {
	net.Conn
	c   Ciphers
	wmu sync.Mutex
}

// NewObfsConn returns conn with c applied.
func NewObfsConn(conn net.Conn, c Ciphers) *ObfsConn {
	return &ObfsConn{Conn: conn, c: c}
}

// Read reads and decrypts.
func (o *ObfsConn) Read(p []byte) (int, error) {
	n, err := o.Conn.Read(p)
	if n > 0 {
		o.c.Dec.XORKeyStream(p[:n], p[:n])
	}
	return n, err
}

// Write encrypts p into a borrowed buffer (p is left alone) and writes
// it, a batch's worth at a time. After a short write the stream is out of
// step and the conn must be closed.
func (o *ObfsConn) Write(p []byte) (int, error) {
	o.wmu.Lock()
	defer o.wmu.Unlock()
	bp := getBuf()
	defer putBuf(bp)
	b := (*bp)[:cap(*bp)]
	sent := 0
	for len(p) > 0 {
		n := min(len(p), len(b))
		if rest := len(p) - n; rest > 0 && rest < MinRecordLen {
			// The next write would be a record too short to send.
			n -= MinRecordLen
		}
		o.c.Enc.XORKeyStream(b[:n], p[:n])
		m, err := o.Conn.Write(b[:n])
		sent += m
		if err != nil {
			return sent, err
		}
		p = p[n:]
	}
	return sent, nil
}

// CloseWrite half-closes the underlying conn, if it can.
func (o *ObfsConn) CloseWrite() error { return closeWrite(o.Conn) }

// WaitRead waits for the underlying conn to have something to read (see
// [transport.ReadWaiter]).
func (o *ObfsConn) WaitRead() bool { return transport.WaitRead(o.Conn) }

func closeWrite(c net.Conn) error {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.New("mtproxy: conn cannot half-close")
}
