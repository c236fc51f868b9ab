package client

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/merpati/merpati/transport"
	"github.com/merpati/merpati/transport/acceptloop"
	"github.com/merpati/merpati/transport/hello"
	"github.com/merpati/merpati/transport/mtproxy"
)

// mtproxyWindow is how far the app's FakeTLS timestamp may be from our
// clock. The app runs on the same device, so this is generous.
const mtproxyWindow = 2 * time.Minute

// mtproxyReplayTTL is how long the front at least remembers a hello it
// accepted. A hello verifies for 2×mtproxyWindow (its timestamp ± the
// window), so remembering it longer than that from the moment it was first
// seen refuses every replay.
const mtproxyReplayTTL = 5 * time.Minute

// mtproxyReplayMax bounds each of the replay cache's two generations (a
// few megabytes at most). Only hellos signed with the secret get in, so
// only a holder of the secret can fill it, which then rotates it early.
const mtproxyReplayMax = 1 << 16

// errReplay means a FakeTLS hello the front had already accepted came
// again.
var errReplay = errors.New("replayed FakeTLS hello")

// ServeMTProxy serves a local MTProxy front on ln until ctx is done, and
// closes ln: Telegram apps configured with secret (an "ee" FakeTLS secret,
// see [mtproxy.NewSecret] and the tg://proxy link of [link.ProxyLink])
// connect to it, and each of their connections is carried to the
// datacenter the app names as a stream through the relay, like a SOCKS5
// one. Connections whose hello does not verify, or repeats one accepted in
// the last five minutes or so (a replay), are closed.
//
// Temporary Accept errors (such as "too many open files") are retried
// after a pause of 5ms doubling to 1s, as for SOCKS5.
func (c *Client) ServeMTProxy(ctx context.Context, ln net.Listener, secret mtproxy.Secret) error {
	if secret.Key.IsZero() {
		return errors.New("client: ServeMTProxy: zero secret")
	}
	log := c.log.With("transport", "mtproxy")
	err := acceptloop.Serve(ctx, ln, log, func(ctx context.Context, conn net.Conn) {
		if err := c.handleMTProxy(ctx, conn, secret); err != nil {
			log.Debug("MTProxy connection ended", "err", err)
		}
	})
	if err != nil {
		return fmt.Errorf("client: mtproxy: %w", err)
	}
	return nil
}

// handleMTProxy serves one app connection: FakeTLS and obfuscated2 from
// the app, a stream to the DC through the relay, and obfuscated2 of our own
// to the DC over that stream (the relay carries raw bytes), re-encrypting
// in both directions.
func (c *Client) handleMTProxy(ctx context.Context, conn net.Conn, secret mtproxy.Secret) error {
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	br := bufio.NewReaderSize(conn, hello.MaxRecordLen)
	rec, err := hello.ReadRecord(br)
	if err != nil {
		return fmt.Errorf("read hello: %w", err)
	}
	h, err := mtproxy.ParseClientHello(rec)
	if err != nil {
		return err
	}
	now := time.Now()
	if err := h.Verify(secret.Key, now, mtproxyWindow); err != nil {
		return err
	}
	if c.mtReplay.Seen(h.Random[:]) {
		return errReplay
	}
	app, in, err := mtproxy.AcceptApp(conn, br, secret.Key, h)
	if err != nil {
		return err
	}
	st, err := c.OpenStream(ctx, transport.DCTarget(int32(in.DC)))
	if err != nil {
		return fmt.Errorf("open stream to DC %d: %w", in.DC, err)
	}
	dc, err := mtproxy.StartDC(st, in.Protocol, in.DC)
	if err != nil {
		st.Close()
		return err
	}
	conn.SetDeadline(time.Time{})
	c.log.Debug("MTProxy connection open", "transport", "mtproxy", "dc", in.DC)
	transport.Splice(app, dc, nil)
	return nil
}
