package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/merpati/merpati/transport"
	"github.com/merpati/merpati/transport/auth"
	"github.com/merpati/merpati/transport/link"
	"github.com/merpati/merpati/transport/mtproxy"
	"github.com/merpati/merpati/transport/mtproxy/mtproxytest"
	"github.com/merpati/merpati/transport/quiccarrier"
	"github.com/merpati/merpati/transport/tlscarrier"
)

// openConcurrency is how many sessions the driver opens at a time: under
// the relay's cap of unauthenticated connections per source network
// (tlscarrier.DefaultMaxUnauthPerSource, 64).
const openConcurrency = 8

// cmdSessions is the many-sessions driver: it opens idle carrier sessions
// (tls, quic: with the link's key, straight to the relay), idle
// connections (plain-tls, plain-quic: to the tunnel server) or idle app
// connections to the datacenter (mtproxy: FakeTLS to the relay; splice:
// through the one-hop splice), each of which first echoes one packet, on
// command and holds them. Commands, one a line on standard input:
//
//	open N    open N more; answers "opened N SECONDS" or "error ..."
//	count     answers "sessions N", those still alive, followed by why
//	          the most of the others ended ("sessions N; K: REASON")
//
// End of input closes them all and ends the process.
func cmdSessions(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("sessions", stderr)
	kind := fs.String("kind", "", "tls, plain-tls, quic, plain-quic, mtproxy or splice (required)")
	addr := fs.String("addr", "", "relay, tunnel server or splice address (required)")
	linkText := fs.String("link", "", "merpati:// link (tls, quic)")
	pin := fs.String("pin", "", "hex SHA-256 of the tunnel server certificate's SubjectPublicKeyInfo (plain-tls, plain-quic)")
	secret := fs.String("secret", "", "the relay's MTProxy secret, as a tg://proxy link has it (mtproxy)")
	bufSize := sizeValue(64 << 10)
	fs.Var(&bufSize, "buf", "the packet each mtproxy or splice connection (or, with --stream, each stream) echoes before it idles")
	stream := fs.Bool("stream", false, "tls, plain-tls, quic, plain-quic: open a stream to the DC in each session, echo a packet and keep it open")
	dc := fs.String("dc", "", "the DC's address, for --stream through the plain tunnels")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var dial sessionDial
	var err error
	if *kind == "mtproxy" || *kind == "splice" {
		dial, err = appDialer(*kind, *addr, *secret, int(bufSize))
	} else {
		dial, err = sessionDialer(*kind, *addr, *linkText, *pin, *dc)
		if err == nil && *stream {
			dial = withStream(dial, int(bufSize))
		}
	}
	if err != nil {
		return fmt.Errorf("sessions: %w", err)
	}
	var (
		mu     sync.Mutex
		closer []func()
		ended  []func() error
	)
	defer func() {
		mu.Lock()
		defer mu.Unlock()
		var wg sync.WaitGroup
		for _, c := range closer {
			wg.Go(c)
		}
		wg.Wait()
	}()
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		switch {
		case len(f) == 2 && f[0] == "open":
			n, err := strconv.Atoi(f[1])
			if err != nil || n <= 0 {
				fmt.Fprintf(stdout, "error bad count %q\n", f[1])
				continue
			}
			start := time.Now()
			var next atomic.Int64
			var firstErr atomic.Value
			var wg sync.WaitGroup
			for range min(openConcurrency, n) {
				wg.Go(func() {
					for next.Add(1) <= int64(n) && ctx.Err() == nil {
						dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
						h, err := dial(dctx)
						cancel()
						if err != nil {
							firstErr.CompareAndSwap(nil, err)
							return
						}
						mu.Lock()
						closer = append(closer, h.close)
						ended = append(ended, h.ended)
						mu.Unlock()
					}
				})
			}
			wg.Wait()
			if err, _ := firstErr.Load().(error); err != nil {
				fmt.Fprintf(stdout, "error %v\n", err)
				continue
			}
			fmt.Fprintf(stdout, "opened %d %.6f\n", n, time.Since(start).Seconds())
		case len(f) == 1 && f[0] == "count":
			mu.Lock()
			live := 0
			why := map[string]int{}
			for _, ended := range ended {
				if err := ended(); err != nil {
					why[err.Error()]++
				} else {
					live++
				}
			}
			mu.Unlock()
			top := ""
			for r, k := range why {
				if top == "" || k > why[top] || k == why[top] && r < top {
					top = r
				}
			}
			if top == "" {
				fmt.Fprintf(stdout, "sessions %d\n", live)
			} else {
				fmt.Fprintf(stdout, "sessions %d; %d: %s\n", live, why[top], strings.ReplaceAll(top, "\n", " "))
			}
		default:
			fmt.Fprintf(stdout, "error unknown command %q\n", sc.Text())
		}
	}
	return nil
}

// A sessionDial opens one session.
type sessionDial func(ctx context.Context) (*held, error)

// A held session: how to close it, tell why it ended (nil while alive), and
// open a stream to the DC in it (nil where it has none to open).
type held struct {
	close func()
	ended func() error
	open  func(ctx context.Context) (io.ReadWriteCloser, error)
}

// withStream makes each session of dial open a stream to the DC, echo a
// packet of size bytes on it, and keep it open (closed with the session).
func withStream(dial sessionDial, size int) sessionDial {
	pkt := packet(size)
	return func(ctx context.Context) (*held, error) {
		h, err := dial(ctx)
		if err != nil {
			return nil, err
		}
		st, err := h.open(ctx)
		if err == nil {
			if dl, ok := ctx.Deadline(); ok {
				if c, ok := st.(interface{ SetDeadline(time.Time) error }); ok {
					c.SetDeadline(dl)
					defer c.SetDeadline(time.Time{})
				}
			}
			if err = echo(st, pkt); err != nil {
				st.Close()
			}
		}
		if err != nil {
			h.close()
			return nil, fmt.Errorf("stream: %w", err)
		}
		closeSession := h.close
		h.close = func() { st.Close(); closeSession() }
		return h, nil
	}
}

// sessionDialer opens carrier sessions (tls, quic) or tunnel connections
// (plain-tls, plain-quic); their streams go to DC dcPlain, or through the
// tunnel to dc.
func sessionDialer(kind, addr, linkText, pin, dc string) (sessionDial, error) {
	if addr == "" {
		return nil, fmt.Errorf("--addr is required")
	}
	switch kind {
	case "tls", "quic":
		l, err := link.Parse(linkText)
		if err != nil {
			return nil, fmt.Errorf("--link: %w", err)
		}
		var d transport.Dialer
		if kind == "tls" {
			d, err = tlscarrier.NewDialer(tlscarrier.ClientConfig{
				Addr: addr, ServerName: l.SNI, Pin: l.Pin, Key: auth.Key(l.Key), AuthKey: l.AuthKey,
			})
		} else {
			d, err = quiccarrier.NewDialer(quiccarrier.ClientConfig{
				Addr: addr, ServerName: l.SNI, Pin: l.Pin, Key: auth.Key(l.Key), AuthKey: l.AuthKey,
			})
		}
		if err != nil {
			return nil, err
		}
		return func(ctx context.Context) (*held, error) {
			s, err := d.Dial(ctx)
			if err != nil {
				return nil, err
			}
			return &held{
				close: func() { s.Close() },
				ended: s.Err,
				open: func(ctx context.Context) (io.ReadWriteCloser, error) {
					st, err := s.OpenStream(ctx)
					if err != nil {
						return nil, err
					}
					// As a merpati client: nothing after the open
					// request until the relay's reply.
					if dl, ok := ctx.Deadline(); ok {
						st.SetDeadline(dl)
					}
					_, err = transport.OpenRequest{Target: transport.DCTarget(dcPlain)}.WriteTo(st)
					var r transport.OpenReply
					if err == nil {
						r, err = transport.ReadOpenReply(st)
					}
					if err == nil && r.Status != transport.StatusOK {
						err = &transport.StatusError{Status: r.Status}
					}
					if err != nil {
						st.Close()
						return nil, err
					}
					return st, nil
				},
			}, nil
		}, nil
	case "plain-tls":
		conf, err := pinnedConfig(pin, tunnelName, tunnelALPN)
		if err != nil {
			return nil, err
		}
		d := &tls.Dialer{Config: conf}
		return func(ctx context.Context) (*held, error) {
			c, err := d.DialContext(ctx, "tcp", addr)
			if err != nil {
				return nil, err
			}
			return &held{
				close: func() { c.Close() },
				ended: func() error { return nil },
				open: func(context.Context) (io.ReadWriteCloser, error) {
					// The connection is the stream.
					return nopCloser{c}, openTunnel(c, dc)
				},
			}, nil
		}, nil
	case "plain-quic":
		conf, err := pinnedConfig(pin, tunnelName, tunnelALPN)
		if err != nil {
			return nil, err
		}
		return func(ctx context.Context) (*held, error) {
			c, err := quic.DialAddr(ctx, addr, conf, quicTunnelConfig())
			if err != nil {
				return nil, err
			}
			return &held{
				close: func() { c.CloseWithError(0, "") },
				ended: func() error { return context.Cause(c.Context()) },
				open: func(ctx context.Context) (io.ReadWriteCloser, error) {
					st, err := c.OpenStreamSync(ctx)
					if err != nil {
						return nil, err
					}
					return st, openTunnel(st, dc)
				},
			}, nil
		}, nil
	}
	return nil, fmt.Errorf("--kind %q: want tls, plain-tls, quic, plain-quic, mtproxy or splice", kind)
}

// nopCloser is a connection that is its session's stream: the session
// closes it.
type nopCloser struct{ net.Conn }

func (nopCloser) Close() error { return nil }

// appDialer opens the app connections of the mtproxy and splice paths:
// each completes its handshakes (FakeTLS and obfuscated2 to the relay, or
// obfuscated2 through the splice), echoes one packet of size bytes
// through the datacenter, and is then held idle.
func appDialer(kind, addr, secretText string, size int) (sessionDial, error) {
	if addr == "" {
		return nil, fmt.Errorf("--addr is required")
	}
	var hs func(c net.Conn) (net.Conn, error)
	if kind == "mtproxy" {
		secret, err := mtproxy.ParseSecret(secretText)
		if err != nil {
			return nil, fmt.Errorf("--secret: %w", err)
		}
		rec, err := helloRecord(secret.Host)
		if err != nil {
			return nil, err
		}
		hs = func(c net.Conn) (net.Conn, error) {
			return mtproxytest.ClientHandshake(c, secret, rec, time.Now(), mtproxy.PaddedIntermediate, dcObfs)
		}
	} else {
		hs = func(c net.Conn) (net.Conn, error) { return mtproxy.StartDC(c, mtproxy.PaddedIntermediate, dcObfs) }
	}
	pkt := packet(size)
	return func(ctx context.Context) (*held, error) {
		c, err := dialSpread(addr)
		if err != nil {
			return nil, err
		}
		if dl, ok := ctx.Deadline(); ok {
			c.SetDeadline(dl)
		}
		s, err := hs(c)
		if err == nil {
			err = echo(s, pkt)
		}
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("%s connection: %w", kind, err)
		}
		c.SetDeadline(time.Time{})
		return &held{close: func() { c.Close() }, ended: func() error { return nil }}, nil
	}, nil
}
