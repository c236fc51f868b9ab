package telegramtest

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/gotd/log"
	"github.com/gotd/td/crypto"
	"github.com/gotd/td/exchange"
	"github.com/gotd/td/mt"
	"github.com/gotd/td/proto"
	"github.com/gotd/td/telegram/dcs"
	"github.com/gotd/td/tg"
	"github.com/gotd/td/tgtest"
	"github.com/gotd/td/tgtest/services"
	"github.com/gotd/td/tgtest/services/config"
	"github.com/gotd/td/tmap"
)

// ListenDC starts a DC with datacenter number id listening on addr, which
// must name a loopback IP literal (port 0 lets the kernel choose; see
// [DC.Addr]). It is [StartDC] for programs that have no testing.TB, such
// as the merpati-lab demo DC: ctx bounds only the listen, and the DC
// serves until [DC.Close]. id must be positive.
func ListenDC(ctx context.Context, id int, addr string) (*DC, error) {
	if id <= 0 {
		return nil, fmt.Errorf("telegramtest: DC id must be positive, got %d", id)
	}
	ap, err := netip.ParseAddrPort(addr)
	if err != nil || !ap.Addr().IsLoopback() {
		return nil, fmt.Errorf("telegramtest: DC address %q: want a loopback IP and port", addr)
	}

	key, err := rsa.GenerateKey(rand.Reader, crypto.RSAKeyBits)
	if err != nil {
		return nil, fmt.Errorf("telegramtest: generate DC RSA key: %w", err)
	}

	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("telegramtest: listen: %w", err)
	}
	tcpAddr := ln.Addr().(*net.TCPAddr)

	d := &DC{
		ID:   id,
		Addr: tcpAddr.String(),
		logs: newLogBuffer(),
		list: dcList(id, tcpAddr.IP.String(), tcpAddr.Port),
	}

	// The config the DC hands out names only itself, so a client that
	// refreshes its DC list from help.getConfig still sees only loopback.
	cfg := &tg.Config{DCOptions: d.list.Options, ThisDC: id}
	dispatch := tgtest.NewDispatcher()
	config.NewService(cfg, &tg.CDNConfig{}).Register(dispatch)
	dispatch.HandleFunc(tg.HelpGetDeepLinkInfoRequestTypeID, echo)
	dispatch.Fallback(tgtest.HandlerFunc(services.NotImplemented))

	priv := tgtest.NewPrivateKey(key)
	d.Key = priv.Public()
	handler := tgtest.UnpackInvoke(dispatch)
	opts := tgtest.ServerOptions{
		DC:     id,
		Logger: log.With(d.logs.logger(), log.String("peer", "dc"), log.Int("dc", id)),
		Types:  tmap.New(tg.TypesMap(), mt.TypesMap(), proto.TypesMap()),
	}
	d.srv = newConnServer(ln, &d.accepted, &d.obfuscated, func() *tgtest.Server {
		return tgtest.NewServer(priv, handler, opts)
	})
	return d, nil
}

// RemoteDC describes a DC served elsewhere (by another process, say, such
// as merpati-lab's), so that [Run] and [RunWithResolver] can drive a
// client against it: id is its datacenter number, addr its loopback
// host:port, key its public key (see [ParsePublicKeyPEM]). The returned DC
// serves nothing: its Accepted count stays zero and Close does nothing.
func RemoteDC(id int, addr string, key exchange.PublicKey) (*DC, error) {
	if id <= 0 {
		return nil, fmt.Errorf("telegramtest: DC id must be positive, got %d", id)
	}
	ap, err := netip.ParseAddrPort(addr)
	if err != nil || !ap.Addr().IsLoopback() {
		return nil, fmt.Errorf("telegramtest: DC address %q: want a loopback IP and port", addr)
	}
	if key.Zero() {
		return nil, errors.New("telegramtest: RemoteDC: no key")
	}
	return &DC{
		ID:   id,
		Addr: ap.String(),
		Key:  key,
		logs: newLogBuffer(),
		list: dcList(id, ap.Addr().String(), int(ap.Port())),
	}, nil
}

func dcList(id int, ip string, port int) dcs.List {
	return dcs.List{Options: []tg.DCOption{{
		ID:        id,
		Static:    true,
		IPAddress: ip,
		Port:      port,
	}}}
}

// Close stops a DC made by [ListenDC] or [StartDC]: it stops accepting,
// closes every connection and waits for the DC's goroutines. Close is
// idempotent, and does nothing for a [RemoteDC].
func (d *DC) Close() error {
	if d.srv != nil {
		d.srv.close()
	}
	return nil
}

// PublicKeyPEM returns the DC's public key as a PEM "RSA PUBLIC KEY"
// (PKCS #1) block, the form in which Telegram publishes its keys.
func (d *DC) PublicKeyPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "RSA PUBLIC KEY", Bytes: x509.MarshalPKCS1PublicKey(d.Key.RSA)})
}

// Fingerprint returns the DC key's MTProto fingerprint (the low 64 bits of
// the SHA-1 of its TL serialisation), which the client names in req_DH_params.
func (d *DC) Fingerprint() int64 { return crypto.RSAFingerprint(d.Key.RSA) }

// ParsePublicKeyPEM parses the first RSA public key (PKCS #1 or PKIX) in
// data, as written by [DC.PublicKeyPEM].
func ParsePublicKeyPEM(data []byte) (exchange.PublicKey, error) {
	keys, err := crypto.ParseRSAPublicKeys(data)
	if err != nil {
		return exchange.PublicKey{}, fmt.Errorf("telegramtest: parse DC key: %w", err)
	}
	if len(keys) == 0 {
		return exchange.PublicKey{}, errors.New("telegramtest: parse DC key: no key found")
	}
	return exchange.PublicKey{RSA: keys[0]}, nil
}
