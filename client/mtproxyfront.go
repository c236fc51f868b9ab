package client

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/merpati/merpati/transport"
	"github.com/merpati/merpati/transport/hello"
	"github.com/merpati/merpati/transport/mtproxy"
)

// mtproxyWindow is how far the app's FakeTLS timestamp may be from our
// clock. The app runs on the same device, so this is generous.
const mtproxyWindow = 2 * time.Minute

// ServeMTProxy serves a local MTProxy front on ln until ctx is done, and
// closes ln: Telegram apps configured with secret (an "ee" FakeTLS secret,
// see [mtproxy.NewSecret] and the tg://proxy link of [link.ProxyLink])
// connect to it, and each of their connections is carried to the
// datacenter the app names as a stream through the relay, like a SOCKS5
// one. Connections whose hello does not verify are closed.
//
// The front is meant for loopback: it keeps no replay cache, since nobody
// but the device's own apps can reach it.
func (c *Client) ServeMTProxy(ctx context.Context, ln net.Listener, secret mtproxy.Secret) error {
	if secret.Key.IsZero() {
		return errors.New("client: ServeMTProxy: zero secret")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() { <-ctx.Done(); ln.Close() }()
	var wg sync.WaitGroup
	defer wg.Wait()
	var delay time.Duration
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				time.Sleep(delay)
				continue
			}
			return fmt.Errorf("client: mtproxy accept: %w", err)
		}
		delay = 0
		wg.Go(func() {
			stop := context.AfterFunc(ctx, func() { conn.Close() })
			defer stop()
			defer conn.Close()
			if err := c.handleMTProxy(ctx, conn, secret); err != nil {
				c.log.Debug("MTProxy connection ended", "transport", "mtproxy", "err", err)
			}
		})
	}
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
	if err := h.Verify(secret.Key, time.Now(), mtproxyWindow); err != nil {
		return err
	}
	app, in, err := mtproxy.AcceptApp(conn, bufio.NewReaderSize(br, 32<<10), secret.Key, h)
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
