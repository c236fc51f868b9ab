package relay

import (
	"bufio"
	"context"
	"net"
	"time"

	"github.com/merpati/merpati/relay/access"
	"github.com/merpati/merpati/transport"
	"github.com/merpati/merpati/transport/mtproxy"
)

// mtproxyWindow is how far a FakeTLS hello's timestamp may be from the
// relay's clock. Apps sign with their device clock, which can be off by a
// minute or so; the replay cache (antireplay.DefaultTTL, 5 minutes) must
// remember accepted hellos for longer than the window, and does.
const mtproxyWindow = 2 * time.Minute

// mtproxyHandshakeTimeout bounds the FakeTLS and obfuscated2 exchange with
// an app, once its hello is accepted.
const mtproxyHandshakeTimeout = 20 * time.Second

// serveMTProxy serves c as a direct MTProxy connection from a stock
// Telegram app if rec, the first record already read, is a FakeTLS hello
// signed with some access key's MTProxy secret, within the time window and
// not a replay. It reports false, having consumed nothing beyond rec and
// what br buffered, when the hello is none of that: the caller then sends
// the connection to the cover site.
//
// Once the hello is accepted there is no way back to the cover site (the
// server hello has been sent): failures just close the connection. authed
// is called once the connection is accepted, before that.
func (r *Relay) serveMTProxy(ctx context.Context, c net.Conn, br *bufio.Reader, rec []byte, authed func()) bool {
	h, err := mtproxy.ParseClientHello(rec)
	if err != nil {
		return false
	}
	now := time.Now()
	u, key := r.cfg.Keys.MatchMTProxy(h, now, mtproxyWindow)
	if u == nil {
		return false
	}
	if r.mtReplay.Seen(h.Random[:]) {
		r.warns.warn(r.log, "replayed MTProxy hello sent to cover site", "key", u.Name())
		return false
	}
	log := r.log.With("transport", "mtproxy", "key", u.Name())
	// An app over its limits looks, to anyone watching, like a wrong
	// secret: the cover site. Each connection is one stream of its key.
	if u.OverQuota() {
		r.warns.keyInfo(r.log, u.Name(), "MTProxy connection refused: key over its byte quota (quota_bytes)",
			"quota", u.Entry().QuotaBytes)
		return false
	}
	if !u.AcquireStream() {
		r.warns.keyInfo(r.log, u.Name(), "MTProxy connection refused: key at its stream limit (max_streams)",
			"limit", u.Entry().StreamLimit())
		return false
	}
	defer u.ReleaseStream()
	authed()
	untrack, ok := u.Track(c)
	defer untrack()
	if !ok {
		return true
	}

	c.SetDeadline(time.Now().Add(mtproxyHandshakeTimeout))
	// A large read buffer lets TLSConn return several records per read,
	// so the relay forwards big chunks with few system calls.
	app, in, err := mtproxy.AcceptApp(c, bufio.NewReaderSize(br, 32<<10), key, h)
	if err != nil {
		log.Debug("MTProxy handshake failed", "err", err)
		return true
	}
	log = log.With("dc", in.DC)
	wctx, wcancel := context.WithTimeout(ctx, r.cfg.DialTimeout)
	err = u.AcquireDial(wctx, r.cfg.MaxDialsPerKey)
	wcancel()
	if err != nil {
		if ctx.Err() != nil {
			return true
		}
		r.warns.keyInfo(r.log, u.Name(), "MTProxy connection closed: too many of the key's streams waiting on a dial",
			"limit", r.cfg.MaxDialsPerKey)
		return true
	}
	up, _, err := r.dialer.Dial(ctx, transport.DCTarget(int32(in.DC)))
	u.ReleaseDial()
	if err != nil {
		log.Debug("MTProxy dial failed", "err", err)
		return true
	}
	up.SetDeadline(time.Now().Add(mtproxyHandshakeTimeout))
	dc, err := mtproxy.StartDC(up, in.Protocol, in.DC)
	if err != nil {
		up.Close()
		log.Debug("MTProxy DC handshake failed", "err", err)
		return true
	}
	c.SetDeadline(time.Time{})
	up.SetDeadline(time.Time{})
	log.Debug("MTProxy connection open")
	transport.Splice(app, dc, func(n int) {
		u.AddBytes(int64(n))
		if u.OverQuota() {
			c.Close()
			up.Close()
		}
	})
	return true
}

// MTProxySecret returns the FakeTLS secret of access key e, as its
// tg://proxy link carries it: e's MTProxy key with the relay's server name
// as cover host. It reports false if e has no MTProxy key.
func (d *Dir) MTProxySecret(e access.Entry) (mtproxy.Secret, bool) {
	if e.MTProxySecret.IsZero() {
		return mtproxy.Secret{}, false
	}
	return mtproxy.Secret{Key: e.MTProxySecret, Host: d.Settings.ServerName()}, true
}
