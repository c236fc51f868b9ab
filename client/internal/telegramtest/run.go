package telegramtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/gotd/log"
	"github.com/gotd/td/telegram"
	"github.com/gotd/td/telegram/dcs"
	"github.com/gotd/td/tg"
)

// ErrNotLoopback is returned by dial functions wrapped with [LoopbackOnly]
// when asked for an address that is not a loopback IP literal.
var ErrNotLoopback = errors.New("telegramtest: refusing to dial a non-loopback address")

// ErrWrongAnswer is returned by [Run] when the DC's answer to an echo RPC is
// not the request's payload.
var ErrWrongAnswer = errors.New("telegramtest: wrong RPC answer")

// Stats describes one [Run].
type Stats struct {
	// KeyExchange is the time from the start of the run until the client
	// had its auth key: the dial, any handshake the dial or resolver adds
	// (SOCKS5, MTProxy, FakeTLS), the transport header and the MTProto
	// Diffie-Hellman exchange. It is zero if the run failed before that.
	KeyExchange time.Duration
	// FirstRPC is the round trip of the first echo RPC, sent once the
	// session is initialised (initConnection with help.getConfig done).
	FirstRPC time.Duration
	// Total is the time from the start of the run until the last RPC was
	// answered. It excludes shutdown.
	Total time.Duration
	// RPCs is the number of echo RPCs answered correctly.
	RPCs int
}

// LoopbackOnly wraps dial so that it refuses, with [ErrNotLoopback], any
// address whose host is not a loopback IP literal (host names are refused
// too: resolving them could leak a query). Use it for dial functions given
// to resolvers passed to [RunWithResolver], such as dcs.MTProxyOptions.Dial.
func LoopbackOnly(dial func(ctx context.Context, network, addr string) (net.Conn, error)) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		if err := checkLoopback(addr); err != nil {
			return nil, err
		}
		return dial(ctx, network, addr)
	}
}

func checkLoopback(addr string) error {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil || !ap.Addr().IsLoopback() {
		return fmt.Errorf("%w: %q", ErrNotLoopback, addr)
	}
	return nil
}

// Run connects a real gotd telegram.Client to dc, making every TCP
// connection with dial, completes a fresh MTProto auth key exchange and
// initConnection, then performs n echo RPCs (help.getDeepLinkInfo) one after
// another, checking that each answer carries its request's payload.
// Payload sizes cycle through 16 B, 256 B, 4 KiB and 24 KiB, so some
// requests span several TLS records when tunnelled.
//
// The client dials only addresses from dc's DC list, i.e. dc.Addr. A dial
// to anything other than a loopback IP is refused (and fails the test that
// started dc, if [StartDC] did), so the client can never reach real
// Telegram. Any connection loss ends the run with an error rather than a
// reconnect, so a failing dial makes Run return promptly; ctx bounds
// everything else (a peer that stalls, say).
//
// Run may be called concurrently, and many times against one DC; each call
// is a new client with a new auth key.
func Run(ctx context.Context, dc *DC, dial func(ctx context.Context, network, addr string) (net.Conn, error), n int) (Stats, error) {
	if dial == nil {
		return Stats{}, errors.New("telegramtest: Run: nil dial")
	}
	guarded := func(ctx context.Context, network, addr string) (net.Conn, error) {
		if err := checkLoopback(addr); err != nil {
			if dc.tb != nil {
				dc.tb.Errorf("telegramtest: client tried to dial %s %s: %v", network, addr, err)
			}
			return nil, err
		}
		return dial(ctx, network, addr)
	}
	return RunWithResolver(ctx, dc, dcs.Plain(dcs.PlainOptions{Dial: guarded}), n)
}

// RunWithResolver is [Run] with the connections made by resolver, which is
// asked for DC number dc.ID, for example a dcs.MTProxy resolver pointed at
// a relay that forwards to dc. The client's DC list still names only dc.
// RunWithResolver cannot see where resolver dials; wrap its dial function
// with [LoopbackOnly].
func RunWithResolver(ctx context.Context, dc *DC, resolver dcs.Resolver, n int) (Stats, error) {
	if resolver == nil {
		return Stats{}, errors.New("telegramtest: RunWithResolver: nil resolver")
	}
	if n < 0 {
		return Stats{}, fmt.Errorf("telegramtest: RunWithResolver: negative RPC count %d", n)
	}
	payloads, err := makePayloads(n)
	if err != nil {
		return Stats{}, err
	}

	parent := ctx
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)

	start := time.Now()
	hook := &keyHook{
		next:  log.With(dc.logs.logger(), log.String("peer", "client")),
		start: start,
	}
	client := telegram.NewClient(1, "telegramtest", telegram.Options{
		DC:         dc.ID,
		DCList:     dc.List(),
		PublicKeys: []telegram.PublicKey{dc.Key},
		Resolver:   resolver,
		Logger:     hook,
		NoUpdates:  true,
		// gotd reconnects forever by default. A test wants the first
		// failure, so any connection loss ends the run.
		OnDead: func(err error) {
			cancel(fmt.Errorf("telegramtest: connection to DC %d lost: %w", dc.ID, err))
		},
	})

	var (
		stats  Stats
		done   bool
		rpcErr error
	)
	runErr := client.Run(ctx, func(ctx context.Context) error {
		api := client.API()
		for i, p := range payloads {
			t0 := time.Now()
			res, err := api.HelpGetDeepLinkInfo(ctx, p)
			if err != nil {
				rpcErr = fmt.Errorf("telegramtest: RPC %d of %d: %w", i+1, n, err)
				return rpcErr
			}
			if info, ok := res.(*tg.HelpDeepLinkInfo); !ok || info.Message != p {
				rpcErr = fmt.Errorf("%w: RPC %d of %d: got %T", ErrWrongAnswer, i+1, n, res)
				return rpcErr
			}
			if i == 0 {
				stats.FirstRPC = time.Since(t0)
			}
			stats.RPCs++
		}
		stats.Total = time.Since(start)
		done = true
		return nil
	})
	stats.KeyExchange = hook.elapsed()

	// Report the first cause: the caller's ctx ending (which may also show
	// as a timeout on the connection), a lost connection, a failed RPC,
	// then the client's own error.
	switch {
	case done && runErr == nil:
		return stats, nil
	case parent.Err() != nil:
		return stats, fmt.Errorf("telegramtest: stopped after %d of %d RPCs: %w", stats.RPCs, n, context.Cause(parent))
	case pastDeadline(parent):
		// gotd turns ctx's deadline into connection deadlines, which can
		// fire just before ctx itself is done.
		return stats, fmt.Errorf("telegramtest: stopped after %d of %d RPCs: %w (%v)", stats.RPCs, n, context.DeadlineExceeded, context.Cause(ctx))
	case context.Cause(ctx) != nil && !errors.Is(context.Cause(ctx), context.Canceled):
		return stats, context.Cause(ctx)
	case rpcErr != nil:
		return stats, rpcErr
	case runErr != nil:
		return stats, fmt.Errorf("telegramtest: client: %w", runErr)
	default:
		return stats, fmt.Errorf("telegramtest: client stopped after %d of %d RPCs: %w", stats.RPCs, n, context.Cause(ctx))
	}
}

func pastDeadline(ctx context.Context) bool {
	d, ok := ctx.Deadline()
	return ok && !time.Now().Before(d)
}

// payloadSizes are the echo payload lengths Run cycles through, in bytes of
// hex text.
var payloadSizes = [...]int{16, 256, 4 << 10, 24 << 10}

func makePayloads(n int) ([]string, error) {
	ps := make([]string, n)
	for i := range ps {
		b := make([]byte, payloadSizes[i%len(payloadSizes)]/2)
		if _, err := rand.Read(b); err != nil {
			return nil, err
		}
		ps[i] = hex.EncodeToString(b)
	}
	return ps, nil
}

// authKeyGenerated is the message gotd's mtproto package logs at Info
// level when a (non-PFS) key exchange completes. gotd offers no other hook;
// TestDirect fails if a gotd upgrade renames it.
const authKeyGenerated = "Auth key generated"

// keyHook is a gotd logger that notes when the auth key was generated and
// passes every record on to next.
type keyHook struct {
	next  log.Logger
	start time.Time

	mu  sync.Mutex
	got time.Duration
}

// Enabled implements log.Logger. Info must stay enabled for the hook.
func (h *keyHook) Enabled(ctx context.Context, level log.Level) bool {
	return level >= log.LevelInfo || h.next.Enabled(ctx, level)
}

// Log implements log.Logger.
func (h *keyHook) Log(ctx context.Context, level log.Level, msg string, attrs ...log.Attr) {
	if msg == authKeyGenerated {
		h.mu.Lock()
		if h.got == 0 {
			h.got = time.Since(h.start)
		}
		h.mu.Unlock()
	}
	if h.next.Enabled(ctx, level) {
		h.next.Log(ctx, level, msg, attrs...)
	}
}

func (h *keyHook) elapsed() time.Duration {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.got
}
