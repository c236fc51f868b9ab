package relaytest

import (
	"context"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/merpati/merpati/transport"
	"github.com/merpati/merpati/transport/auth"
	"github.com/merpati/merpati/transport/link"
	"github.com/merpati/merpati/transport/quiccarrier"
	"github.com/merpati/merpati/transport/tlscarrier"
)

// Carriers lists every carrier a relay serves, by its name in links, in
// the order [ForEachCarrier] runs them. Tests must not change it.
var Carriers = []string{link.CarrierTLS, link.CarrierQUIC}

// ForEachCarrier runs f once per carrier of [Carriers], each as a subtest
// named after the carrier, one after the other. Each subtest checks for
// leaked goroutines ([CheckLeaks]) before anything else, so f need not.
func ForEachCarrier(t *testing.T, f func(t *testing.T, carrier string)) {
	t.Helper()
	for _, carrier := range Carriers {
		t.Run(carrier, func(t *testing.T) {
			CheckLeaks(t)
			f(t, carrier)
		})
	}
}

// CheckLeaks fails t if goroutines started during the test outlive it
// (goleak, ignoring those running when it is called). Call it first, so
// that its cleanup runs after every other.
func CheckLeaks(t testing.TB) {
	t.Helper()
	opts := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, opts) })
}

// Logger returns a logger that writes at debug level to t's log, with
// each line prefixed by name, when the tests run with -v; otherwise nil,
// which the client and relay take as discard.
func Logger(t testing.TB, name string) *slog.Logger {
	if !testing.Verbose() {
		return nil
	}
	return slog.New(slog.NewTextHandler(tWriter{t, name}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct {
	t    testing.TB
	name string
}

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Logf("%s: %s", w.name, p)
	return len(p), nil
}

// Dialer returns carrier's dialer for the first relay of l, with l's pin,
// server name and key, configured as the client configures it.
func Dialer(t testing.TB, l *link.Link, carrier string) transport.Dialer {
	t.Helper()
	var (
		d   transport.Dialer
		err error
	)
	log := Logger(t, carrier+" dialer")
	switch carrier {
	case link.CarrierTLS:
		d, err = tlscarrier.NewDialer(tlscarrier.ClientConfig{
			Addr:       l.Relays[0],
			ServerName: l.SNI,
			Pin:        l.Pin,
			Key:        auth.Key(l.Key),
			AuthKey:    l.AuthKey,
			Logger:     log,
		})
	case link.CarrierQUIC:
		d, err = quiccarrier.NewDialer(quiccarrier.ClientConfig{
			Addr:       l.Relays[0],
			ServerName: l.SNI,
			Pin:        l.Pin,
			Key:        auth.Key(l.Key),
			AuthKey:    l.AuthKey,
			Logger:     log,
		})
	default:
		err = fmt.Errorf("relaytest: no dialer for carrier %q", carrier)
	}
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// Session dials a session to the first relay of l over carrier, within
// 20 seconds, and closes it at the end of the test. The QUIC carrier sends
// its token with the first stream, so a refused key shows only there.
func Session(t testing.TB, l *link.Link, carrier string) (transport.Session, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := Dialer(t, l, carrier).Dial(ctx)
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { s.Close() })
	return s, nil
}

// Open opens a stream to target on s as the client does (request, then
// the relay's reply), within 20 seconds, and returns it with the read and
// write deadlines cleared. A relay's refusal is a *transport.StatusError.
func Open(s transport.Session, target transport.Target) (transport.Stream, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	st, err := s.OpenStream(ctx)
	if err != nil {
		return nil, err
	}
	st.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := (transport.OpenRequest{Target: target}).WriteTo(st); err != nil {
		st.Close()
		return nil, fmt.Errorf("open request: %w", err)
	}
	if _, err := transport.ReadOpenReply(st); err != nil {
		st.Close()
		return nil, err
	}
	st.SetDeadline(time.Time{})
	return st, nil
}
