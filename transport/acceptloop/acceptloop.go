// Package acceptloop is the accept loop every listener of merpati shares (the client's SOCKS5
// and MTProxy fronts, the relay's TLS front door): one goroutine per connection, a pause that grows on
// temporary Accept errors such as "too many open files" instead of giving
// up, and a shutdown that closes and waits for everything it started.
package acceptloop

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/merpati/merpati/transport/closeset"
)

// Backoff after a temporary Accept error, as in net/http's Server.Serve.
const (
	// MinBackoff is the first pause after a temporary Accept error.
	MinBackoff = 5 * time.Millisecond
	// MaxBackoff is the longest pause: it doubles from MinBackoff up to
	// this.
	MaxBackoff = time.Second
)

// A Handler serves one accepted connection. The loop closes conn after the
// handler returns (unless it called [Keep]), and as soon as ctx is done,
// so a handler blocked on conn returns then.
type Handler func(ctx context.Context, conn net.Conn)

// Serve accepts connections on ln and runs handle for each in its own
// goroutine until ctx is done. Temporary Accept errors (EMFILE, ENFILE and
// the like) are logged at Error on log (nil means none) and retried after a
// pause of [MinBackoff] doubling to [MaxBackoff]; the pause resets after a
// successful Accept.
//
// Serve returns nil when ctx is done, or the first permanent Accept error.
// Either way it has closed ln and every connection it accepted and waited
// for every handler to return.
func Serve(ctx context.Context, ln net.Listener, log *slog.Logger, handle Handler) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	// Closing the connections when the loop stops unblocks handlers
	// busy reading or copying, and ends the connections kept open.
	var live closeset.Set[*keeper]
	stop := context.AfterFunc(ctx, func() {
		ln.Close()
		live.CloseAll()
	})
	defer stop()

	var backoff time.Duration
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if isTemporary(err) {
				backoff = max(MinBackoff, min(2*backoff, MaxBackoff))
				log.Error("accept failed; retrying", "err", err, "backoff", backoff)
				if !sleep(ctx, backoff) {
					return nil
				}
				continue
			}
			ln.Close()
			return fmt.Errorf("accept: %w", err)
		}
		backoff = 0
		wg.Go(func() {
			k := &keeper{live: &live, conn: conn}
			if !live.Add(k) {
				conn.Close() // the loop is stopping
				return
			}
			handle(context.WithValue(ctx, keeperKey{}, k), conn)
			if !k.kept {
				live.Remove(k)
				conn.Close()
			}
		})
	}
}

// A keeper is the state [Keep] changes, in the context of a handler.
// It is also the connection's entry in the set the loop closes at its
// end.
type keeper struct {
	kept bool
	live *closeset.Set[*keeper]
	conn net.Conn
}

// release takes a kept connection out of the loop's set.
func (k *keeper) release() { k.live.Remove(k) }

// Close closes the connection (the loop stops).
func (k *keeper) Close() error { return k.conn.Close() }

type keeperKey struct{}

// Keep, called by a handler with the context Serve gave it, keeps the
// handler's connection open after the handler returns: a connection
// handed on to a long-lived owner then needs no goroutine parked until it
// ends. The loop still closes it when it stops, until its owner calls
// release, once, as the connection ends. Keep reports false, and changes
// nothing, for a context that did not come from Serve.
func Keep(ctx context.Context) (release func(), ok bool) {
	k, ok := ctx.Value(keeperKey{}).(*keeper)
	if !ok {
		return nil, false
	}
	k.kept = true
	return k.release, true
}

// isTemporary reports whether an Accept error is worth retrying, the way
// net/http decides it. The method is deprecated on net.Error because its
// meaning is vague, but for Accept it still marks EMFILE, ENFILE and
// friends; a timeout (a listener with a deadline) counts too.
func isTemporary(err error) bool {
	var t interface{ Temporary() bool }
	if errors.As(err, &t) && t.Temporary() {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// sleep waits for d or until ctx is done, and reports whether d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
