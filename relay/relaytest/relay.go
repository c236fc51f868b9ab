package relaytest

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/merpati/merpati/relay"
	"github.com/merpati/merpati/relay/access"
	"github.com/merpati/merpati/transport"
	"github.com/merpati/merpati/transport/link"
	"github.com/merpati/merpati/transport/quiccarrier"
)

// Options configure a relay started by [Start]. The zero value is a relay
// on which every carrier answers, with Telegram's own datacenter table.
type Options struct {
	// DC overrides datacenter addresses, "ID=HOST:PORT" as in
	// [relay.Settings].DC.
	DC []string
	// Carriers lists the carriers that answer; nil means all of
	// [Carriers]. The socket of a carrier left out is bound, so that the
	// port number stays the relay's, but silent, as a censor's blocking
	// would leave it: a closed TCP port (connections are refused), a UDP
	// port that swallows every packet.
	Carriers []string
	// CertFrom, if not nil, gives the relay CertFrom's certificate, so
	// that one link (one pin) covers both relays.
	CertFrom *Relay
	// Config, if not nil, adjusts the relay's Config before the relay is
	// made. The Config's Logger writes to [Relay].Logs.
	Config func(*relay.Config)
	// KeyKind, if set, gives the relay a key of this kind (see
	// [relay.InitWithKey]), as init does when the cover site's leaf has
	// one; empty means ECDSA P-256. CertFrom overrides it.
	KeyKind string
	// SamePort, if set, puts the relay on 127.0.0.2 at the cover site's
	// port number, as a real relay shares 443 with its cover site: what
	// the cover site says of its own port (Alt-Svc) then holds for the
	// relay's too.
	SamePort bool
}

// A Relay is a relay running in-process on 127.0.0.1, on one port number
// for TCP (the TLS carrier) and UDP (the QUIC carrier), that may dial
// loopback targets (127.0.0.0/8) besides Telegram. It watches its keys
// file every 20 ms.
type Relay struct {
	// Addr is the relay's "host:port", on TCP and on UDP.
	Addr string
	// Dir is the relay directory it runs from.
	Dir *relay.Dir
	// Keys is the relay's live keyring.
	Keys *access.Keyring
	// Relay is the running relay.
	Relay *relay.Relay
	// Logs is what the relay has logged, at every level.
	Logs *Logs

	stop func()
}

// A CoverSite is a cover site a relay stands in front of: a [Cover] or
// [Caddy].
type CoverSite interface {
	// Addr returns its "host:port", on TCP and, with HTTP/3, on UDP.
	Addr() string
}

// Start starts a relay whose cover site is cov, and returns it once it
// accepts connections. It stops at the end of the test. In front of a
// cover site without HTTP/3 the relay runs no QUIC carrier, and its UDP
// port is closed, as [relay.Run] leaves it.
func Start(t testing.TB, cov CoverSite, opts Options) *Relay {
	t.Helper()
	answer := opts.Carriers
	if answer == nil {
		answer = Carriers
	}
	var ln net.Listener
	var pc net.PacketConn
	if opts.SamePort {
		_, port, _ := net.SplitHostPort(cov.Addr())
		ln, pc = listenBothAt(t, net.JoinHostPort("127.0.0.2", port))
	} else {
		ln, pc = listenBoth(t)
	}
	addr := ln.Addr().String()
	path := filepath.Join(t.TempDir(), "relay")
	keyKind := opts.KeyKind
	if keyKind == "" {
		keyKind = "ECDSA-P256"
	}
	d, err := relay.InitWithKey(path, relay.Settings{
		Listen: addr,
		Public: []string{addr},
		Cover:  "https://" + cov.Addr(),
		SNI:    CoverName,
		DC:     opts.DC,
		Allow:  []string{"127.0.0.0/8"},
	}, keyKind)
	if err != nil {
		t.Fatal(err)
	}
	if opts.CertFrom != nil {
		for _, f := range []string{relay.CertFile, relay.KeyFile} {
			b, err := os.ReadFile(filepath.Join(opts.CertFrom.Dir.Path, f))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(path, f), b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		if d, err = relay.LoadDir(path); err != nil {
			t.Fatal(err)
		}
	}
	logs := &Logs{}
	log := logs.logger(t, "relay "+addr)
	cfg, err := d.Config(log)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Logger = log
	// On a machine busy with tests, a client's hello may take longer than
	// a real one's to follow its TCP handshake; tests that count what
	// reaches the cover site must not see it dialled for a key holder.
	cfg.CoverDelay = time.Second
	if opts.Config != nil {
		opts.Config(&cfg)
	}
	rl, err := relay.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	// As relay.Run does: key holders' TLS flight follows the cover's.
	// The relay's own connection for it is not a prober's or a client's.
	if c, ok := cov.(*Cover); ok {
		before := c.accepted.Load()
		rl.LearnCover(t.Context())
		c.relays.Add(c.accepted.Load() - before)
	} else {
		rl.LearnCover(t.Context())
	}

	var ls []transport.Listener
	closeAll := func() {
		for _, l := range ls {
			l.Close()
		}
	}
	if slices.Contains(answer, link.CarrierTLS) {
		l, err := rl.ListenTLS(ln)
		if err != nil {
			pc.Close()
			t.Fatal(err)
		}
		ls = append(ls, l)
	} else {
		// Nothing listening: connections are refused.
		ln.Close()
	}
	var silent net.PacketConn
	if slices.Contains(answer, link.CarrierQUIC) {
		l, err := rl.ListenQUIC(pc)
		switch {
		case errors.Is(err, quiccarrier.ErrNoHTTP3):
			// pc is closed: the port is, as the cover site's.
		case err != nil:
			closeAll()
			t.Fatal(err)
		default:
			ls = append(ls, l)
		}
	} else {
		// Bound but never read: packets vanish.
		silent = pc
	}

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := rl.ServeListeners(ctx, ls...); err != nil {
			t.Errorf("relay %s: %v", addr, err)
		}
	})
	wg.Go(func() { cfg.Keys.Watch(ctx, 20*time.Millisecond) })
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			wg.Wait()
			if silent != nil {
				silent.Close()
			}
		})
	}
	t.Cleanup(stop)
	return &Relay{Addr: addr, Dir: d, Keys: cfg.Keys, Relay: rl, Logs: logs, stop: stop}
}

// listenBothAt binds addr for TCP and UDP.
func listenBothAt(t testing.TB, addr string) (net.Listener, net.PacketConn) {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		ln.Close()
		t.Fatal(err)
	}
	return ln, pc
}

// listenBoth binds 127.0.0.1 on one port number for TCP and UDP.
func listenBoth(t testing.TB) (net.Listener, net.PacketConn) {
	t.Helper()
	for range 20 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		pc, err := net.ListenPacket("udp", ln.Addr().String())
		if err == nil {
			return ln, pc
		}
		ln.Close()
	}
	t.Fatal("no port free for both TCP and UDP")
	return nil, nil
}

// Stop stops the relay and returns once it has: every session ends, and
// its sockets close. Calling it again does nothing.
func (r *Relay) Stop() { r.stop() }

// AddKey makes a new access key with limits, has the relay load it at
// once, and returns its share link (which lists every carrier).
func (r *Relay) AddKey(t testing.TB, name string, limits access.Entry) *link.Link {
	t.Helper()
	e, err := access.Add(r.Dir.KeysPath(), name, limits)
	if err != nil {
		t.Fatal(err)
	}
	r.reload(t)
	return r.Dir.Link(e)
}

// AddEntry adds e, an access key made elsewhere (at another relay), to the
// relay's keys and has the relay load it at once.
func (r *Relay) AddEntry(t testing.TB, e access.Entry) {
	t.Helper()
	err := access.Update(r.Dir.KeysPath(), func(es []access.Entry) ([]access.Entry, error) {
		return append(es, e), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	r.reload(t)
}

// Revoke revokes the access key name and has the relay reload its keys at
// once: the key's sessions are closed.
func (r *Relay) Revoke(t testing.TB, name string) {
	t.Helper()
	if err := access.Revoke(r.Dir.KeysPath(), name); err != nil {
		t.Fatal(err)
	}
	r.reload(t)
}

func (r *Relay) reload(t testing.TB) {
	t.Helper()
	if _, err := r.Keys.Reload(); err != nil {
		t.Fatal(err)
	}
}

// AddSharedKey makes a new access key with limits that every relay of rs
// accepts (they should share one certificate, see [Options].CertFrom),
// and returns its share link, listing the relays in the order given.
func AddSharedKey(t testing.TB, name string, limits access.Entry, rs ...*Relay) *link.Link {
	t.Helper()
	e, err := access.Add(rs[0].Dir.KeysPath(), name, limits)
	if err != nil {
		t.Fatal(err)
	}
	rs[0].reload(t)
	l := rs[0].Dir.Link(e)
	l.Relays = []string{rs[0].Addr}
	for _, r := range rs[1:] {
		r.AddEntry(t, e)
		l.Relays = append(l.Relays, r.Addr)
	}
	return l
}
