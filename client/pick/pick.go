// Package pick chooses how the client reaches a relay: it holds the
// candidates (one per relay and carrier), races the carriers of a relay,
// keeps one live session, and when that session dies or stalls, moves new
// streams to the next relay that works.
//
// # Racing
//
// The carriers of one relay race "happy eyeballs" style (RFC 8305 in
// spirit): the preferred carrier is dialed first, the next one
// [Config.RaceDelay] later (or at once when the first fails), and the first
// session to come up wins; the loser's attempt is cancelled, and a loser
// that still completes is closed. QUIC is preferred by default: where UDP
// is blocked it never answers and TCP wins RaceDelay later.
//
// # Memory per network
//
// The winner (relay and carrier) is remembered per network, so the next
// race on the same network starts with it. A network is named by
// [Config.NetworkID]; the default is the local address of the route to the
// Internet (found with an unconnected UDP socket's connect, which sends no
// packet): it changes when the device moves between Wi-Fi, cellular or
// VPN, which is when the censor in the path may change too.
//
// In the background, every [Config.ReraceInterval], a session that is not
// on the most preferred relay and carrier re-races; a better winner takes
// over new streams, and the old session is closed after
// [Config.DrainTimeout].
//
// # Failover
//
// A session that reports itself dead is replaced at the next
// [Picker.Session], starting with the next relay. A session that silently
// stops answering (a blackholed relay) is caught by [Picker.Watch]: when a
// stream open waits longer than [Config.StallTimeout], the session is
// pinged, and if the relay gives no sign of life within
// [Config.ProbeTimeout] the session is failed, so the stream retries on
// the next relay.
//
// A session the relay closed in an orderly way is not a failure: an idle
// session that the relay closes after a minute or so without streams, as
// a web server closes an idle HTTP/2 connection, ends with an error
// wrapping [transport.ErrOrderlyClose]. The next [Picker.Session] then
// opens a new session quietly, to the same relay and carrier, with no log
// above Debug and no move to the next relay; a session that still carries
// streams after such a close (an HTTP/2 GOAWAY) is left to finish them.
//
// The Picker sends no ping of its own on a timer: the status line uses the
// last round trip measured, and a session is pinged only when a stream
// open stalls (above), for [Picker.Status], and by the carrier itself
// before it reuses a session that has been silent (the TLS carrier's
// ping-before-reuse, as a browser does).
//
// The ping ([transport.Session.Ping]) never competes with the streams: it
// opens no stream and does not wait behind their data, and anything the
// relay sends counts as an answer. A session that is merely slow (a busy
// uplink, busy CPUs, thousands of streams, a stream waiting for the
// relay's stream limit) is therefore left alone, while one whose relay
// went silent is failed within StallTimeout + ProbeTimeout, 1.5 s by
// default.
//
// # Goroutines
//
// A Picker owns every goroutine it starts (dials, probes, the background
// loop); [Picker.Close] cancels them and returns only once they have
// ended.
package pick

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/merpati/merpati/transport"
)

// A Candidate is one way to reach one relay.
type Candidate struct {
	// Relay is the relay's "host:port", for logs and status.
	Relay string
	// Dialer opens sessions over one carrier.
	Dialer transport.Dialer
}

// defaultCarriers is the default carrier preference: QUIC first.
var defaultCarriers = []string{"quic", "tls"}

// Config configures a [Picker].
type Config struct {
	// Candidates, relays in order of preference. At least one is
	// required.
	Candidates []Candidate
	// Carriers orders the carriers of one relay for the race; nil means
	// "quic", then "tls". Carriers not listed come last.
	Carriers []string
	// AttemptTimeout bounds each race; zero means 10 seconds.
	AttemptTimeout time.Duration
	// RaceDelay is the head start of each carrier over the next; zero
	// means 300 ms.
	RaceDelay time.Duration
	// NetworkID names the network the client is on, for remembering
	// winners; nil means the local address of the default route.
	NetworkID func() string
	// ReraceInterval is how often a session on a less preferred relay or
	// carrier re-races in the background; zero means 5 minutes, negative
	// never.
	ReraceInterval time.Duration
	// DrainTimeout is how long a session replaced by a re-race stays open
	// for its streams; zero means 5 minutes.
	DrainTimeout time.Duration
	// StallTimeout is how long [Picker.Watch] lets a stream open wait
	// before pinging the session; zero means 700 ms.
	StallTimeout time.Duration
	// ProbeTimeout is how long that ping waits for a sign of life from
	// the relay before the session is failed; zero means 800 ms.
	ProbeTimeout time.Duration
	// StatusInterval is how often the status line is logged at Info;
	// zero means 1 minute, negative never.
	StatusInterval time.Duration
	// Logger receives session changes and status lines; nil discards.
	Logger *slog.Logger
}

// An Active is the session in use and where it goes.
type Active struct {
	// Session is the live session. Its streams count their bytes into
	// the Active.
	Session transport.Session
	Relay   string
	Carrier string
	Since   time.Time

	raw       transport.Session
	done      chan struct{} // closed when raw is done or a has failed
	doneOnce  sync.Once
	failErr   atomic.Pointer[error]
	relay     int // index into Picker.relays
	rank      int // carrier preference within the relay, 0 = best
	sent, got atomic.Int64
	rtt       atomic.Int64 // the latest round trip measured, in ns; 0 if none
}

// Bytes returns the application bytes sent and received through a's
// streams.
func (a *Active) Bytes() (sent, received int64) { return a.sent.Load(), a.got.Load() }

// RTT measures the round-trip time to a's relay: the carrier's own
// estimate where it keeps one without asking (QUIC's smoothed RTT), else a
// ping. Zero means unknown.
func (a *Active) RTT(ctx context.Context) (time.Duration, error) {
	if d := a.carrierRTT(); d > 0 {
		return d, nil
	}
	d, err := a.raw.Ping(ctx)
	a.noteRTT(d, err)
	return d, err
}

// carrierRTT returns the carrier's own estimate of the round trip, or
// zero if it keeps none.
func (a *Active) carrierRTT() time.Duration {
	if r, ok := a.raw.(interface{ RTT() time.Duration }); ok {
		return r.RTT()
	}
	return 0
}

// lastRTT returns a round trip without asking the relay: the carrier's
// estimate, else the latest one a ping measured, else zero.
func (a *Active) lastRTT() time.Duration {
	if d := a.carrierRTT(); d > 0 {
		return d
	}
	return time.Duration(a.rtt.Load())
}

func (a *Active) noteRTT(d time.Duration, err error) {
	if err == nil && d > 0 {
		a.rtt.Store(int64(d))
	}
}

// orderly reports whether s ended, or refused a stream with err, because
// the relay closed it in an orderly way (see [transport.ErrOrderlyClose]).
// A session that died otherwise is a failure even if err says orderly.
func orderly(s transport.Session, err error) bool {
	if e := s.Err(); e != nil {
		return errors.Is(e, transport.ErrOrderlyClose)
	}
	return err != nil && errors.Is(err, transport.ErrOrderlyClose)
}

// A Status describes the session in use, for `merpati status` or logs.
type Status struct {
	Relay, Carrier string
	Network        string
	Since          time.Time
	RTT            time.Duration // zero if unknown
	Sent, Received int64
}

// A Picker hands out the current session, racing carriers when there is
// none. It is safe for concurrent use. Close it to stop its background
// work.
type Picker struct {
	cfg    Config
	log    *slog.Logger
	ctx    context.Context // done once Close begins; every dial and probe derives from it
	cancel context.CancelFunc
	wg     sync.WaitGroup // every goroutine the Picker started; see enter

	mu      sync.Mutex
	relays  []string      // in order of first appearance
	cands   [][]Candidate // per relay, in link order
	cur     *Active
	dialing chan struct{} // closed when the dial in progress ends
	joins   chan []entry  // candidates added while a race runs; nil otherwise
	dialErr error
	next    int                     // relay to try first
	memory  map[string]winner       // per network
	drains  map[*Active]*time.Timer // sessions replaced by a re-race, closed when their timer fires
	reopen  winner                  // the relay and carrier of the session last closed in an orderly way
	closed  bool
}

type winner struct{ relay, carrier string }

// ErrClosed is returned by a closed Picker.
var ErrClosed = errors.New("pick: closed")

// New checks cfg and returns a Picker. It dials nothing yet.
func New(cfg Config) (*Picker, error) {
	if len(cfg.Candidates) == 0 {
		return nil, errors.New("pick: Config.Candidates: at least one required")
	}
	if cfg.AttemptTimeout <= 0 {
		cfg.AttemptTimeout = 10 * time.Second
	}
	if cfg.RaceDelay <= 0 {
		cfg.RaceDelay = 300 * time.Millisecond
	}
	if cfg.Carriers == nil {
		cfg.Carriers = defaultCarriers
	}
	if cfg.NetworkID == nil {
		cfg.NetworkID = DefaultNetworkID
	}
	if cfg.ReraceInterval == 0 {
		cfg.ReraceInterval = 5 * time.Minute
	}
	if cfg.DrainTimeout <= 0 {
		cfg.DrainTimeout = 5 * time.Minute
	}
	if cfg.StallTimeout <= 0 {
		cfg.StallTimeout = 700 * time.Millisecond
	}
	if cfg.ProbeTimeout <= 0 {
		cfg.ProbeTimeout = 800 * time.Millisecond
	}
	if cfg.StatusInterval == 0 {
		cfg.StatusInterval = time.Minute
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	p := &Picker{cfg: cfg, log: log, memory: map[string]winner{}, drains: map[*Active]*time.Timer{}}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	p.addLocked(cfg.Candidates)
	p.wg.Go(p.background)
	return p, nil
}

// enter counts the calling goroutine (one a timer started) among those
// Close waits for, and reports whether it may go on: not once p is closed.
// If it returns true, the caller must call p.wg.Done when it ends. Close
// marks p closed under p.mu before it waits, so no goroutine is counted
// after the wait began.
func (p *Picker) enter() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	p.wg.Add(1)
	return true
}

// spawn runs f in a goroutine that Close waits for, unless p is closed; it
// reports whether it did.
func (p *Picker) spawn(f func()) bool {
	if !p.enter() {
		return false
	}
	go func() {
		defer p.wg.Done()
		f()
	}()
	return true
}

// DefaultNetworkID returns the local address the kernel would use to
// reach the Internet (IPv4, else IPv6), or "" when there is no route. It
// sends no packet: connecting a UDP socket only picks a route.
func DefaultNetworkID() string {
	for _, probe := range []string{"192.0.2.1:443", "[2001:db8::1]:443"} { // RFC 5737, RFC 3849
		c, err := net.Dial("udp", probe)
		if err != nil {
			continue
		}
		a := c.LocalAddr().(*net.UDPAddr)
		c.Close()
		return a.IP.String()
	}
	return ""
}

// addLocked adds the candidates not yet known by relay and carrier and
// returns how many it added.
func (p *Picker) addLocked(cands []Candidate) int {
	n := 0
	for _, c := range cands {
		i := slices.Index(p.relays, c.Relay)
		if i < 0 {
			p.relays = append(p.relays, c.Relay)
			p.cands = append(p.cands, nil)
			i = len(p.relays) - 1
		}
		if slices.ContainsFunc(p.cands[i], func(o Candidate) bool { return o.Dialer.Carrier() == c.Dialer.Carrier() }) {
			continue
		}
		p.cands[i] = append(p.cands[i], c)
		n++
	}
	return n
}

// rank orders carriers by preference.
func (p *Picker) rank(carrier string) int {
	if i := slices.Index(p.cfg.Carriers, carrier); i >= 0 {
		return i
	}
	return len(p.cfg.Carriers)
}

// Session returns the live session, racing for one if needed. Concurrent
// callers share one race.
func (p *Picker) Session(ctx context.Context) (*Active, error) {
	for {
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return nil, ErrClosed
		}
		if a := p.cur; a != nil {
			select {
			case <-a.Session.Done():
				p.cur = nil
				if orderly(a.raw, nil) {
					// An idle session the relay closed: open a new
					// one, to the same relay, without a fuss.
					p.log.Debug("session closed by the relay", "relay", a.Relay, "transport", a.Carrier, "err", a.raw.Err())
					p.next = a.relay
					p.reopen = winner{a.Relay, a.Carrier}
					break
				}
				p.log.Info("session lost", "relay", a.Relay, "transport", a.Carrier, "err", a.Session.Err())
				p.next = a.relay + 1
				p.forgetLocked(a)
			default:
				p.mu.Unlock()
				return a, nil
			}
		}
		if p.dialing == nil {
			p.dialing = make(chan struct{})
			first := p.next
			p.wg.Go(func() { p.dial(first) }) // p.mu held and p not closed, as enter requires
		}
		wait := p.dialing
		p.mu.Unlock()
		select {
		case <-wait:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		p.mu.Lock()
		err := p.dialErr
		got := p.cur
		p.mu.Unlock()
		if got == nil && err != nil {
			return nil, err
		}
	}
}

// order returns the relays to race, starting at first, with the relay
// remembered for network first.
func (p *Picker) order(first int, network string) []int {
	n := len(p.relays)
	var idx []int
	if w, ok := p.memory[network]; ok {
		if i := slices.Index(p.relays, w.relay); i >= 0 {
			idx = append(idx, i)
		}
	}
	for k := range n {
		i := (first + k) % n
		if !slices.Contains(idx, i) {
			idx = append(idx, i)
		}
	}
	return idx
}

// raceOrder returns relay i's candidates in the order to start them:
// the remembered winner for network first, then by carrier preference.
func (p *Picker) raceOrder(i int, network string) []Candidate {
	cands := slices.Clone(p.cands[i])
	slices.SortStableFunc(cands, func(a, b Candidate) int {
		return p.rank(a.Dialer.Carrier()) - p.rank(b.Dialer.Carrier())
	})
	if w, ok := p.memory[network]; ok && w.relay == p.relays[i] {
		if j := slices.IndexFunc(cands, func(c Candidate) bool { return c.Dialer.Carrier() == w.carrier }); j > 0 {
			c := cands[j]
			cands = slices.Delete(cands, j, j+1)
			cands = slices.Insert(cands, 0, c)
		}
	}
	return cands
}

// dial races every relay's carriers, relays in order starting at relay
// first (the one remembered for this network before all), and installs
// the winner.
func (p *Picker) dial(first int) {
	network := p.cfg.NetworkID()
	p.mu.Lock()
	var list []entry
	for _, i := range p.order(first%len(p.relays), network) {
		for _, c := range p.raceOrder(i, network) {
			list = append(list, entry{c, i})
		}
	}
	joins := make(chan []entry, 16)
	p.joins = joins
	p.mu.Unlock()
	won, err := p.race(list, joins)
	p.mu.Lock()
	defer p.mu.Unlock()
	p.joins = nil
	if p.closed && won != nil {
		won.raw.Close()
		won = nil
	}
	p.cur = won
	p.dialErr = nil
	if won == nil {
		p.log.Warn("no relay reachable", "err", err)
		p.dialErr = fmt.Errorf("no relay reachable: %w", err)
	} else {
		p.memory[network] = winner{won.Relay, won.Carrier}
	}
	close(p.dialing)
	p.dialing = nil
}

// An entry is a candidate and the index of its relay.
type entry struct {
	c     Candidate
	relay int
}

// race starts the entries in order, one RaceDelay apart (the next at once
// when one fails), across relays as across carriers, and returns the
// first session that comes up; later ones are closed. Entries arriving on
// joins (relays learned while the race runs) join it at once.
func (p *Picker) race(list []entry, joins <-chan []entry) (*Active, error) {
	if len(list) == 0 {
		return nil, errors.New("no candidates")
	}
	ctx, cancel := context.WithCancel(p.ctx)
	defer cancel()
	type result struct {
		e    entry
		s    transport.Session
		err  error
		took time.Duration
	}
	results := make(chan result, len(list))
	started := 0
	var errs []error
	// start starts the next entry and reports whether it did; it does
	// not once p is closed.
	start := func() bool {
		e := list[started]
		started++
		ok := p.spawn(func() {
			dctx, dcancel := context.WithTimeout(ctx, p.cfg.AttemptTimeout)
			defer dcancel()
			t := time.Now()
			s, err := e.c.Dialer.Dial(dctx)
			results <- result{e, s, err, time.Since(t)}
		})
		if !ok {
			errs = append(errs, ErrClosed)
		}
		return ok
	}
	pending := 0
	if start() {
		pending++
	}
	timer := time.NewTimer(p.cfg.RaceDelay)
	defer timer.Stop()
	for pending > 0 {
		select {
		case <-timer.C:
			if started < len(list) && start() {
				pending++
				timer.Reset(p.cfg.RaceDelay)
			}
		case more := <-joins:
			list = append(list, more...)
			if started < len(list) && start() {
				pending++
				timer.Reset(p.cfg.RaceDelay)
			}
		case r := <-results:
			pending--
			if r.err != nil {
				p.log.Debug("carrier failed", "relay", r.e.c.Relay, "transport", r.e.c.Dialer.Carrier(), "err", r.err)
				errs = append(errs, fmt.Errorf("%s %s: %w", r.e.c.Relay, r.e.c.Dialer.Carrier(), r.err))
				if started < len(list) && start() {
					pending++
					timer.Reset(p.cfg.RaceDelay)
				}
				continue
			}
			// The winner. Close any loser that still comes up.
			cancel()
			closeLosers := func() {
				for range pending {
					if l := <-results; l.s != nil {
						l.s.Close()
					}
				}
			}
			if !p.spawn(closeLosers) {
				closeLosers() // closing: the attempts end at once
			}
			level := slog.LevelInfo
			p.mu.Lock()
			if p.reopen == (winner{r.e.c.Relay, r.e.c.Dialer.Carrier()}) {
				// The same session again after the relay closed
				// an idle one: routine, as "closed" was.
				level = slog.LevelDebug
			}
			p.reopen = winner{}
			p.mu.Unlock()
			p.log.Log(p.ctx, level, "session up", "relay", r.e.c.Relay, "transport", r.e.c.Dialer.Carrier(), "handshake", r.took.Round(time.Millisecond))
			a := &Active{
				Relay:   r.e.c.Relay,
				Carrier: r.e.c.Dialer.Carrier(),
				Since:   time.Now(),
				raw:     r.s,
				relay:   r.e.relay,
				rank:    p.rank(r.e.c.Dialer.Carrier()),
			}
			a.Session = &countedSession{Session: r.s, a: a}
			a.done = make(chan struct{})
			ok := p.spawn(func() {
				select {
				case <-r.s.Done():
				case <-a.done:
				}
				a.markDone()
			})
			if !ok {
				// Closing: the caller drops the session.
				r.s.Close()
				a.markDone()
			}
			return a, nil
		}
	}
	return nil, errors.Join(errs...)
}

func (a *Active) markDone() { a.doneOnce.Do(func() { close(a.done) }) }

// Fail reports that a's session is broken (a stream could not be opened
// on it, or it stopped answering). The session is closed and the next call
// to Session races the next relay.
//
// If the relay closed the session in an orderly way instead (the session
// ended, or err refused a stream, with [transport.ErrOrderlyClose]), that
// is no failure: the next call to Session opens a new session to the same
// relay, nothing is logged above Debug, and a session still carrying
// streams is left to finish them (it is closed after
// [Config.DrainTimeout] at the latest).
func (p *Picker) Fail(a *Active, err error) {
	if orderly(a.raw, err) {
		p.retire(a, err)
		return
	}
	p.mu.Lock()
	if p.cur == a {
		p.log.Info("session failed", "relay", a.Relay, "transport", a.Carrier, "err", err)
		p.cur = nil
		p.next = a.relay + 1
		p.forgetLocked(a)
	}
	p.mu.Unlock()
	// Mark a dead before closing it, so that a stream failing because of
	// the close already sees a.Session.Done closed.
	a.failErr.CompareAndSwap(nil, &err)
	a.markDone()
	a.raw.Close()
}

// retire stops handing out a's session, which the relay closed or is
// closing in an orderly way.
func (p *Picker) retire(a *Active, err error) {
	p.mu.Lock()
	if p.cur == a {
		p.log.Debug("session closed by the relay", "relay", a.Relay, "transport", a.Carrier, "err", err)
		p.cur = nil
		p.next = a.relay
		p.reopen = winner{a.Relay, a.Carrier}
	}
	select {
	case <-a.raw.Done():
		p.mu.Unlock()
		a.markDone()
		return
	default:
	}
	if _, ok := p.drains[a]; ok {
		p.mu.Unlock()
		return
	}
	closeNow := !p.drainLocked(a)
	p.mu.Unlock()
	if closeNow {
		a.raw.Close()
	}
}

// drainLocked closes a's session after [Config.DrainTimeout], or when p
// closes, whichever comes first; its streams go on until then. It reports
// false if p is already closed, when the caller must close it.
func (p *Picker) drainLocked(a *Active) bool {
	if p.closed {
		return false
	}
	p.drains[a] = time.AfterFunc(p.cfg.DrainTimeout, func() {
		if !p.enter() {
			return // Close closes it
		}
		defer p.wg.Done()
		p.mu.Lock()
		delete(p.drains, a)
		p.mu.Unlock()
		a.raw.Close()
	})
	return true
}

// forgetLocked drops a's relay and carrier from the memory of every
// network, so the next race starts with the next relay.
func (p *Picker) forgetLocked(a *Active) {
	for n, w := range p.memory {
		if w.relay == a.Relay && w.carrier == a.Carrier {
			delete(p.memory, n)
		}
	}
}

// Watch guards a stream open on a: if stop is not called within
// [Config.StallTimeout], the session is pinged, and failed if the relay
// gives no sign of life within [Config.ProbeTimeout] (closing it, which
// ends the stalled open with an error so that the caller can retry
// elsewhere). The ping never competes with the session's streams (see
// [transport.Session.Ping]), so a slow but live relay is left alone.
func (p *Picker) Watch(a *Active) (stop func()) {
	ctx, cancel := context.WithCancel(p.ctx)
	t := time.AfterFunc(p.cfg.StallTimeout, func() {
		if !p.enter() {
			return
		}
		defer p.wg.Done()
		pctx, pcancel := context.WithTimeout(ctx, p.cfg.ProbeTimeout)
		defer pcancel()
		d, err := a.raw.Ping(pctx)
		a.noteRTT(d, err)
		if err != nil && ctx.Err() == nil {
			p.Fail(a, fmt.Errorf("relay stopped answering: %w", err))
		}
	})
	return func() {
		cancel()
		t.Stop()
	}
}

// AddCandidates appends candidates (for example relays learned from a
// bootstrap list) that are not already known by Relay and carrier. They are
// tried after the existing ones, and join a race already running. It
// reports how many were added.
func (p *Picker) AddCandidates(cands ...Candidate) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := p.addLocked(cands)
	if n > 0 && p.joins != nil {
		var more []entry
		for _, c := range cands {
			i := slices.Index(p.relays, c.Relay)
			if slices.ContainsFunc(p.cands[i], func(o Candidate) bool { return o.Dialer == c.Dialer }) {
				more = append(more, entry{c, i})
			}
		}
		select {
		case p.joins <- more:
		default: // the race is ending; the next one includes them
		}
	}
	return n
}

// Current returns the live session, or nil, without dialing. A session
// that has ended is not live, even before [Picker.Session] replaces it.
func (p *Picker) Current() *Active {
	p.mu.Lock()
	defer p.mu.Unlock()
	if a := p.cur; a != nil && !a.ended() {
		return a
	}
	return nil
}

// ended reports whether a's session is done or has been failed.
func (a *Active) ended() bool {
	select {
	case <-a.Session.Done():
		return true
	default:
		return false
	}
}

// Status describes the live session; ok is false when there is none. It
// measures the RTT, waiting at most until ctx is done.
func (p *Picker) Status(ctx context.Context) (st Status, ok bool) {
	return p.status(ctx, true)
}

// status is [Picker.Status]; without measure it asks the relay nothing
// and reports the latest round trip known.
func (p *Picker) status(ctx context.Context, measure bool) (st Status, ok bool) {
	a := p.Current()
	if a == nil {
		return st, false
	}
	st = Status{Relay: a.Relay, Carrier: a.Carrier, Since: a.Since, Network: p.cfg.NetworkID()}
	st.Sent, st.Received = a.Bytes()
	if !measure {
		st.RTT = a.lastRTT()
	} else if rtt, err := a.RTT(ctx); err == nil {
		st.RTT = rtt
	}
	return st, true
}

// background logs the status line and re-races until Close.
func (p *Picker) background() {
	var statusC, reraceC <-chan time.Time
	if p.cfg.StatusInterval > 0 {
		t := time.NewTicker(p.cfg.StatusInterval)
		defer t.Stop()
		statusC = t.C
	}
	if p.cfg.ReraceInterval > 0 {
		t := time.NewTicker(p.cfg.ReraceInterval)
		defer t.Stop()
		reraceC = t.C
	}
	for {
		select {
		case <-p.ctx.Done():
			return
		case <-statusC:
			// No ping for a log line: a PING every minute would be a
			// cadence on an otherwise idle session.
			if st, ok := p.status(p.ctx, false); ok {
				p.log.Info("status", "relay", st.Relay, "transport", st.Carrier,
					"rtt", st.RTT.Round(100*time.Microsecond), "sent", st.Sent, "received", st.Received,
					"up", time.Since(st.Since).Round(time.Second))
			} else {
				p.log.Info("status", "relay", "none")
			}
		case <-reraceC:
			p.Rerace()
		}
	}
}

// Rerace races, in the background of the live session, every relay and
// carrier better than the live one (earlier relay, or preferred carrier on
// the same relay). A better winner takes over new streams; the old session
// is closed after [Config.DrainTimeout]. It does nothing without a live
// session or when the live one is already the best.
func (p *Picker) Rerace() {
	p.mu.Lock()
	a := p.cur
	if a == nil || p.closed || p.dialing != nil || a.ended() {
		// Without a live session there is nothing to improve on: the
		// next stream races anew (an idle session the relay closed
		// is not replaced in the background).
		p.mu.Unlock()
		return
	}
	network := p.cfg.NetworkID()
	var list []entry
	for i := range p.relays {
		if i > a.relay {
			break
		}
		for _, c := range p.raceOrder(i, network) {
			if i < a.relay || p.rank(c.Dialer.Carrier()) < a.rank {
				list = append(list, entry{c, i})
			}
		}
	}
	p.mu.Unlock()
	if len(list) == 0 {
		return
	}
	b, err := p.race(list, nil)
	if err != nil {
		return
	}
	p.mu.Lock()
	if p.closed || p.cur != a {
		p.mu.Unlock()
		b.raw.Close()
		return
	}
	p.cur = b
	p.memory[network] = winner{b.Relay, b.Carrier}
	p.drainLocked(a) // p is not closed: checked above
	p.mu.Unlock()
	p.log.Info("re-race: switched", "relay", b.Relay, "transport", b.Carrier, "from_relay", a.Relay, "from_transport", a.Carrier)
}

// Close closes the current session (and any still draining after a
// re-race), cancels the dials and pings in progress, and returns once every
// goroutine the Picker started has ended. Later calls to Session fail.
func (p *Picker) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	a := p.cur
	p.cur = nil
	drains := p.drains
	p.drains = nil
	p.mu.Unlock()
	p.cancel()
	for d, t := range drains {
		t.Stop()
		d.raw.Close()
	}
	if a != nil {
		a.raw.Close()
	}
	p.wg.Wait()
	return nil
}

// countedSession counts the bytes of its streams into an Active.
type countedSession struct {
	transport.Session
	a *Active
}

// Done is closed when the session is done or has been failed. It never
// lags the underlying session's Done.
func (s *countedSession) Done() <-chan struct{} {
	select {
	case <-s.Session.Done():
		s.a.markDone()
	default:
	}
	return s.a.done
}

func (s *countedSession) Err() error {
	if err := s.Session.Err(); err != nil {
		return err
	}
	if e := s.a.failErr.Load(); e != nil {
		return *e
	}
	return nil
}

func (s *countedSession) OpenStream(ctx context.Context) (transport.Stream, error) {
	st, err := s.Session.OpenStream(ctx)
	if err != nil {
		return nil, err
	}
	cs := &countedStream{Stream: st, a: s.a}
	if _, ok := st.(transport.Splicer); ok {
		return splicingStream{cs}, nil
	}
	return cs, nil
}

type countedStream struct {
	transport.Stream
	a *Active
}

func (s *countedStream) Read(b []byte) (int, error) {
	n, err := s.Stream.Read(b)
	s.a.got.Add(int64(n))
	return n, err
}

func (s *countedStream) Write(b []byte) (int, error) {
	n, err := s.Stream.Write(b)
	s.a.sent.Add(int64(n))
	return n, err
}

// WriteSize passes on the carrier stream's preferred write size (see
// [transport.WriteSizer]).
func (s *countedStream) WriteSize() int {
	if ws, ok := s.Stream.(transport.WriteSizer); ok {
		return ws.WriteSize()
	}
	return 0
}

// WriteHeadroom passes on the carrier stream's wish for free bytes before
// the data (see [transport.HeadroomWriter]).
func (s *countedStream) WriteHeadroom() int {
	if hw, ok := s.Stream.(transport.HeadroomWriter); ok {
		return hw.WriteHeadroom()
	}
	return 0
}

// WriteWithHeadroom is the carrier stream's, counted as sent.
func (s *countedStream) WriteWithHeadroom(b []byte, head int) (int, error) {
	hw, ok := s.Stream.(transport.HeadroomWriter)
	if !ok {
		return s.Write(b[head:])
	}
	n, err := hw.WriteWithHeadroom(b, head)
	s.a.sent.Add(int64(n))
	return n, err
}

// WaitWrite passes on the carrier stream's write gate (see
// [transport.WriteGate]).
func (s *countedStream) WaitWrite() {
	if g, ok := s.Stream.(transport.WriteGate); ok {
		g.WaitWrite()
	}
}

// A splicingStream is a countedStream whose carrier stream is a
// [transport.Splicer].
type splicingStream struct{ *countedStream }

// SpliceTo is the carrier stream's, counted as received.
func (s splicingStream) SpliceTo(w io.Writer, count func(int)) (int64, error) {
	return s.Stream.(transport.Splicer).SpliceTo(w, func(n int) {
		s.a.got.Add(int64(n))
		if count != nil {
			count(n)
		}
	})
}
