package quiccarrier

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/quic-go/quic-go"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"

	"github.com/merpati/merpati/transport"
	"github.com/merpati/merpati/transport/deadline"
	"github.com/merpati/merpati/transport/hello"
	"github.com/merpati/merpati/transport/hello/quicinitial"
)

// Defaults of the front door's limits (see [ListenConfig]).
const (
	// DefaultMaxUnauthFlows caps the client addresses whose datagrams
	// are relayed to the cover site, or still being judged, at once.
	DefaultMaxUnauthFlows = 4096
	// DefaultMaxUnauthPerSource caps them per source network (/24 for
	// IPv4, /56 for IPv6). A new flow over either cap takes the place of
	// the cover flow quiet longest, if it has been quiet for a second;
	// otherwise it is dropped, as by a busy server.
	DefaultMaxUnauthPerSource = 64
	// DefaultFlowIdle is how long a flow lives without a datagram
	// either way: longer than the idle timeout of common QUIC servers
	// (nginx 60 s, Caddy 30 s) and of the relay's own connections.
	DefaultFlowIdle = 2 * time.Minute
	// evictQuiet is how long a cover flow must have been quiet before
	// a new flow from its source network may take its place when the
	// network is at its cap: a prober that connects again and again
	// from one network is answered every time, as by the cover itself,
	// while its quiet connections make room (their next datagram starts
	// a new flow).
	evictQuiet = time.Second
	// evictScanEvery spaces the scans for a flow to evict when every
	// source together is at the global cap.
	evictScanEvery = 10 * time.Millisecond
	// DefaultConnIDLen is the length of the relay's connection IDs when
	// the cover site's is not known.
	DefaultConnIDLen = 8
)

const (
	// judgeDatagrams bounds the datagrams a client may send before its
	// first Initial shows the hello's random; Chromium's fits in two.
	judgeDatagrams = 8
	// judgeBytes bounds the bytes kept of them (Chromium's two Initial
	// datagrams are 2.5 KB).
	judgeBytes = 8 << 10
	// judgeTimeout bounds how long a flow may stay undecided.
	judgeTimeout = 5 * time.Second
	// minInitialSize is the least a client's first Initial datagram
	// holds (RFC 9000 section 14.1); servers drop smaller ones.
	minInitialSize = 1200
	// maxDatagram bounds the datagrams read (an Ethernet jumbo frame's
	// payload would be larger, but no QUIC stack sends one by default).
	maxDatagram = 1 << 16
	// inQueue is how many datagrams wait for quic-go; more are dropped,
	// as a full socket buffer would.
	inQueue = 1024
)

// flowState is what the front door does with a client's datagrams.
type flowState int

const (
	flowJudging flowState = iota // reading its first Initials
	flowRelay                    // a key holder's: to quic-go
	flowCover                    // anyone else's: to the cover site
)

// A flow is one client address's datagrams.
type flow struct {
	addr  *net.UDPAddr
	state flowState
	src   netip.Prefix // its source network, counted while unauthenticated
	born  time.Time
	last  atomic.Int64 // Unix nanoseconds of its latest datagram, either way

	// While judging: the Initials read so far, and the datagrams kept to
	// be passed on once the flow is judged.
	col     *quicinitial.Collector
	queue   [][]byte
	queued  int  // bytes in queue
	judging bool // a check of its random is running

	up net.Conn // to the cover site, for a cover flow
	// key is the key holder's whose hello opened a relay flow (nil for
	// one that arrived rebound, by connection ID), random that hello's.
	key    transport.Key
	random [32]byte
	// cid is the relay's connection ID in the client's latest short
	// header packet of a relay flow (zero before one), which the sweep
	// keeps reserved (see cidGen); rebound marks a relay flow that
	// arrived by connection ID.
	cid     cidKey
	rebound bool
}

func (f *flow) touch() { f.last.Store(time.Now().UnixNano()) }

// A frontDoor stands in front of the relay's QUIC server on its UDP
// socket. It judges each client address by its first Initial packets:
// when the ClientHello's random carries a key holder's token (see
// [NewRandom]) the address's datagrams go to quic-go, which reads them
// from the frontDoor as from a socket; every other client's datagrams —
// a browser's, a prober's, a replayed Initial's, garbage — go unchanged
// to the cover site's own UDP port from a socket of their own, and the
// cover's answers go back to the client from the relay's port. A prober
// therefore talks QUIC with the cover site itself: its certificate,
// transport parameters, HTTP/3 SETTINGS, headers, bodies and timing.
//
// Datagrams from an address the door has not seen that are not a new
// Initial go to the cover site too, except short header packets for one
// of the relay's own connection IDs (a key holder whose NAT rebound):
// those IDs carry a MAC under a per-listener secret (see cidGen).
type frontDoor struct {
	pc    net.PacketConn
	cover *net.UDPAddr
	// dialCover opens a flow's socket to the cover site; nil means a
	// UDP socket connected to cover.
	dialCover func() (net.Conn, error)
	auth      transport.Authenticator
	cids      *cidGen
	log       *slog.Logger

	maxFlows, maxPerSource int
	idle                   time.Duration

	in    chan datagram // a key holder's datagrams, for quic-go
	out   *outQueue     // quic-go's datagrams, for sendLoop
	sent  chan struct{} // closed when sendLoop has sent what was queued before Close
	batch batchConn     // pc's, if it is a UDP socket
	// gso and gro are the kernel's offloads on pc (see udpOffload).
	gso, gro bool
	// groReads counts reads that brought several datagrams at once.
	groReads atomic.Uint64
	rd       *deadline.Deadline
	closed   chan struct{}
	once     sync.Once
	wg       sync.WaitGroup

	mu        sync.Mutex
	flows     map[netip.AddrPort]*flow
	unauth    int                      // flows not (yet) a key holder's
	perSource map[netip.Prefix][]*flow // the same, per source network
	lastScan  time.Time                // of evictAny
	// rebound counts the relay flows that arrived by connection ID
	// (capped at maxFlows), inUse is sweep's buffer.
	rebound int
	inUse   []cidKey
}

type datagram struct {
	b    []byte
	bp   *[]byte // b's buffer, from datagramPool; nil if b is its own
	addr *net.UDPAddr
}

// Datagrams for quic-go wait in buffers of a pool (a datagram larger than
// a buffer gets one of its own).
const datagramBuf = 2048

var datagramPool = sync.Pool{New: func() any { b := make([]byte, datagramBuf); return &b }}

// readBatch is how many datagrams (or GRO buffers) one system call reads,
// and writeBatch how many it sends, where the socket allows (recvmmsg and
// sendmmsg on Linux, with GSO and GRO where the kernel has them): quic-go
// reads in batches on a bare socket, and sends bursts in one call (GSO),
// which it cannot do through the door, so the door does both for it.
const (
	readBatch  = 16
	writeBatch = 16
	outBatches = 16 // batches of writeBatch datagrams waiting to be sent
)

var _ net.PacketConn = (*frontDoor)(nil)

func newFrontDoor(pc net.PacketConn, cover *net.UDPAddr, auth transport.Authenticator, cids *cidGen,
	maxFlows, maxPerSource int, idle time.Duration, log *slog.Logger) *frontDoor {
	f := &frontDoor{
		pc: pc, cover: cover, auth: auth, cids: cids, log: log,
		maxFlows: maxFlows, maxPerSource: maxPerSource, idle: idle,
		in:        make(chan datagram, inQueue),
		batch:     newBatchConn(pc),
		rd:        deadline.New(),
		closed:    make(chan struct{}),
		flows:     map[netip.AddrPort]*flow{},
		perSource: map[netip.Prefix][]*flow{},
	}
	f.out = newOutQueue(f.closed)
	if f.batch != nil {
		f.gso, f.gro = udpOffload(pc)
	}
	f.wg.Go(f.readLoop)
	if f.batch != nil {
		f.sent = make(chan struct{})
		f.wg.Go(f.sendLoop)
	}
	f.wg.Go(f.sweepLoop)
	return f
}

// ReadFrom gives quic-go the next datagram of a key holder.
func (f *frontDoor) ReadFrom(b []byte) (int, net.Addr, error) {
	d, err := deadline.Recv(f.rd, f.in, f.closed)
	if err != nil {
		return 0, nil, err
	}
	n := copy(b, d.b)
	if d.bp != nil {
		datagramPool.Put(d.bp)
	}
	return n, d.addr, nil
}

// WriteTo sends quic-go's datagrams from the relay's socket: on a UDP
// socket, through sendLoop, which sends those that queue up while it
// sends in one system call.
func (f *frontDoor) WriteTo(b []byte, addr net.Addr) (int, error) {
	if f.batch == nil || len(b) > datagramBuf {
		return f.pc.WriteTo(b, addr)
	}
	if !f.out.add(b, addr) {
		return 0, net.ErrClosed
	}
	return len(b), nil
}

// An outQueue holds quic-go's datagrams for sendLoop in batches: each
// datagram is copied once, into the batch's buffer behind the one before,
// which is what a segmented send (GSO) sends, and sendLoop is woken once
// per batch rather than once per datagram.
type outQueue struct {
	closed <-chan struct{} // the door's: add gives up
	kick   chan struct{}   // cap 1: sendLoop has something to send

	mu      sync.Mutex
	room    sync.Cond   // on mu: a batch was freed, or the door closed
	filling *outBatch   // add appends here; nil when sendLoop took it
	full    []*outBatch // oldest first
	free    []*outBatch
	made    int
}

func newOutQueue(closed <-chan struct{}) *outQueue {
	q := &outQueue{closed: closed, kick: make(chan struct{}, 1)}
	q.room.L = &q.mu
	return q
}

// An outBatch is up to writeBatch datagrams, end to end in buf.
type outBatch struct {
	buf []byte // cap writeBatch*datagramBuf
	ds  []outDatagram
}

type outDatagram struct {
	off, n int
	to     net.Addr
}

func (b *outBatch) add(p []byte, to net.Addr) {
	b.ds = append(b.ds, outDatagram{off: len(b.buf), n: len(p), to: to})
	b.buf = append(b.buf, p...)
}

func (b *outBatch) bytes(d outDatagram) []byte { return b.buf[d.off : d.off+d.n] }

func (b *outBatch) reset() {
	clear(b.ds) // drop the addresses
	b.buf, b.ds = b.buf[:0], b.ds[:0]
}

// add queues a copy of p for to, waiting while outBatches batches are
// queued, and reports false if the door closed first.
func (q *outQueue) add(p []byte, to net.Addr) bool {
	q.mu.Lock()
	for {
		select {
		case <-q.closed:
			q.mu.Unlock()
			return false
		default:
		}
		if q.filling != nil {
			break
		}
		switch {
		case len(q.free) > 0:
			q.filling = q.free[len(q.free)-1]
			q.free = q.free[:len(q.free)-1]
		case q.made < outBatches:
			q.made++
			q.filling = &outBatch{buf: make([]byte, 0, writeBatch*datagramBuf), ds: make([]outDatagram, 0, writeBatch)}
		default:
			q.room.Wait()
		}
	}
	b := q.filling
	b.add(p, to)
	first := len(b.ds) == 1
	if len(b.ds) == writeBatch {
		q.full = append(q.full, b)
		q.filling = nil
	}
	q.mu.Unlock()
	if first {
		// sendLoop takes what is queued before it waits: it waits only
		// with nothing queued, and then the next datagram starts a batch.
		select {
		case q.kick <- struct{}{}:
		default:
		}
	}
	return true
}

// take moves the queued batches, the one being filled too, to bs.
func (q *outQueue) take(bs []*outBatch) []*outBatch {
	q.mu.Lock()
	bs = append(bs, q.full...)
	clear(q.full)
	q.full = q.full[:0]
	if q.filling != nil {
		bs = append(bs, q.filling)
		q.filling = nil
	}
	q.mu.Unlock()
	return bs
}

// release frees bs, which sendLoop sent.
func (q *outQueue) release(bs []*outBatch) {
	q.mu.Lock()
	for _, b := range bs {
		b.reset()
		q.free = append(q.free, b)
	}
	q.room.Broadcast()
	q.mu.Unlock()
}

// wakeAll wakes the adds that wait for room, to see the door closed.
func (q *outQueue) wakeAll() {
	q.mu.Lock()
	q.room.Broadcast()
	q.mu.Unlock()
}

// sendLoop sends the datagrams WriteTo queues, as many batches at a time
// as are waiting, until the door closes; then it sends what is still
// queued, and closes f.sent.
func (f *frontDoor) sendLoop() {
	defer close(f.sent)
	s := newSender(f)
	var bs []*outBatch
	closing := false
	for {
		bs = f.out.take(bs[:0])
		if len(bs) == 0 {
			if closing {
				return
			}
			select {
			case <-f.out.kick:
			case <-f.closed:
				closing = true
				f.out.wakeAll()
			}
			continue
		}
		for _, b := range bs {
			s.send(b)
		}
		f.out.release(bs)
		clear(bs)
	}
}

// A sender sends batches of datagrams for sendLoop: each run of datagrams
// to one address that GSO can carry (all of one size, the last perhaps
// shorter) as one message, and the messages in one system call.
type sender struct {
	f     *frontDoor
	gso   bool // f.gso, until the kernel refuses a segmented send
	ms    []ipv4.Message
	runs  [][2]int // the datagrams of each message: ds[lo:hi]
	oobs  [][]byte // each message's segment size control message
	nmsgs int      // messages sent, for tests
}

func newSender(f *frontDoor) *sender {
	s := &sender{
		f: f, gso: f.gso,
		ms:   make([]ipv4.Message, writeBatch),
		runs: make([][2]int, writeBatch),
		oobs: make([][]byte, writeBatch),
	}
	for i := range s.ms {
		s.ms[i].Buffers = make([][]byte, 1)
		s.oobs[i] = make([]byte, segmentSizeLen)
	}
	return s
}

// send sends b's datagrams. A run of them that one segmented send carries
// lies end to end in b's buffer already.
func (s *sender) send(b *outBatch) {
	ds := b.ds
	k := 0
	for i := 0; i < len(ds); k++ {
		j := i + 1
		if s.gso {
			j = gsoRun(ds, i)
		}
		m := &s.ms[k]
		m.Addr, m.OOB = ds[i].to, nil
		m.Buffers[0] = b.buf[ds[i].off : ds[j-1].off+ds[j-1].n]
		if j-i > 1 {
			m.OOB = segmentSizeMsg(s.oobs[k], ds[i].n)
		}
		s.runs[k] = [2]int{i, j}
		i = j
	}
	for sent := 0; sent < k; {
		n, err := s.f.batch.WriteBatch(s.ms[sent:k], 0)
		if err != nil || n <= 0 {
			// Send the first message's datagrams one by one, whatever
			// befell it, and go on with the rest.
			run := s.runs[sent]
			if run[1]-run[0] > 1 && isGSOError(err) {
				s.gso = false
				s.f.log.Info("quic front door: the kernel cannot segment sends here; sending datagrams one by one", "err", err)
			}
			for _, d := range ds[run[0]:run[1]] {
				s.f.pc.WriteTo(b.bytes(d), d.to)
			}
			n = 1
		}
		sent += n
	}
	s.nmsgs += k
	for i := range s.ms[:k] {
		s.ms[i].Buffers[0], s.ms[i].Addr, s.ms[i].OOB = nil, nil, nil
	}
}

// gsoRun returns the end of the run of datagrams from ds[i] that one
// segmented send can carry: to the same address, each as long as ds[i],
// except that the last may be shorter.
func gsoRun(ds []outDatagram, i int) int {
	size := ds[i].n
	j := i + 1
	for j < len(ds) && sameAddr(ds[j].to, ds[i].to) {
		n := ds[j].n
		if n > size || n == 0 {
			break
		}
		j++
		if n < size {
			break
		}
	}
	return j
}

// sameAddr reports whether a and b are the same UDP address.
func sameAddr(a, b net.Addr) bool {
	if a == b {
		return true
	}
	ua, ok := a.(*net.UDPAddr)
	ub, ok2 := b.(*net.UDPAddr)
	return ok && ok2 && ua.Port == ub.Port && ua.IP.Equal(ub.IP) && ua.Zone == ub.Zone
}

// Close closes the socket and every cover flow, and waits for the door's
// goroutines.
func (f *frontDoor) Close() error {
	var err error
	f.once.Do(func() {
		close(f.closed)
		if f.sent != nil {
			// What quic-go wrote before (its CONNECTION_CLOSE frames
			// among it) goes out before the socket closes.
			<-f.sent
		}
		err = f.pc.Close()
		f.mu.Lock()
		for _, fl := range f.flows {
			if fl.up != nil {
				fl.up.Close()
			}
		}
		f.mu.Unlock()
		f.wg.Wait()
	})
	return err
}

func (f *frontDoor) LocalAddr() net.Addr { return f.pc.LocalAddr() }

func (f *frontDoor) SetDeadline(t time.Time) error {
	f.rd.Set(t)
	return f.pc.SetWriteDeadline(t)
}

func (f *frontDoor) SetReadDeadline(t time.Time) error {
	f.rd.Set(t)
	return nil
}

func (f *frontDoor) SetWriteDeadline(t time.Time) error { return f.pc.SetWriteDeadline(t) }

// SyscallConn lets quic-go set the socket's options as it does on a bare
// socket: the don't-fragment bit, without which it turns path MTU
// discovery off and never sends a datagram above 1280 bytes, where the
// cover site's server (quic-go in Caddy, nginx) grows its datagrams to
// what the path carries; and its buffer sizes. It cannot read or write
// through it: quic-go must read through the door, not around it (it
// would only try to on a conn with ReadMsgUDP, which the door has not).
func (f *frontDoor) SyscallConn() (syscall.RawConn, error) {
	c, ok := f.pc.(syscall.Conn)
	if !ok {
		return nil, errors.ErrUnsupported
	}
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	return controlOnly{rc}, nil
}

// controlOnly is a socket's syscall.RawConn that only lets its user set
// options.
type controlOnly struct{ rc syscall.RawConn }

func (c controlOnly) Control(f func(fd uintptr)) error { return c.rc.Control(f) }

func (controlOnly) Read(func(fd uintptr) bool) error  { return errors.ErrUnsupported }
func (controlOnly) Write(func(fd uintptr) bool) error { return errors.ErrUnsupported }

// SetReadBuffer and SetWriteBuffer size the socket's buffers, which
// quic-go raises (to 7 MB) as it would on a bare socket.
func (f *frontDoor) SetReadBuffer(n int) error {
	if c, ok := f.pc.(interface{ SetReadBuffer(int) error }); ok {
		return c.SetReadBuffer(n)
	}
	return errors.ErrUnsupported
}

func (f *frontDoor) SetWriteBuffer(n int) error {
	if c, ok := f.pc.(interface{ SetWriteBuffer(int) error }); ok {
		return c.SetWriteBuffer(n)
	}
	return errors.ErrUnsupported
}

// A batchConn reads and writes several datagrams in one system call: the
// ipv4/ipv6 PacketConn of a UDP socket. (On a dual-stack socket, IPv4
// destinations go out as AF_INET addresses, which Linux accepts there.)
type batchConn interface {
	ReadBatch(ms []ipv4.Message, flags int) (int, error)
	WriteBatch(ms []ipv4.Message, flags int) (int, error)
}

// newBatchConn returns a batchConn for pc, or nil if it is not a UDP
// socket.
func newBatchConn(pc net.PacketConn) batchConn {
	uc, ok := pc.(*net.UDPConn)
	if !ok {
		return nil
	}
	if la, ok := uc.LocalAddr().(*net.UDPAddr); ok && la.IP.To4() != nil {
		return ipv4.NewPacketConn(uc)
	}
	return ipv6.NewPacketConn(uc)
}

// readLoop reads the socket until it closes: readBatch datagrams per
// system call on a UDP socket, one at a time on another PacketConn. A
// buffer that GRO coalesced is cut back into its datagrams.
func (f *frontDoor) readLoop() {
	read, n := f.readOne, 1
	if f.batch != nil {
		read, n = f.batch.ReadBatch, readBatch
	}
	ms := make([]ipv4.Message, n)
	for i := range ms {
		ms[i].Buffers = [][]byte{make([]byte, maxDatagram)}
		if f.gro {
			ms[i].OOB = make([]byte, oobSpace)
		}
	}
	for {
		n, err := read(ms, 0)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			select {
			case <-f.closed:
				return
			default:
			}
			f.log.Debug("quic front door: read", "err", err)
			// A transient error (ICMP errors reported on the socket):
			// go on, but do not spin.
			time.Sleep(time.Millisecond)
			continue
		}
		for i := range ms[:n] {
			if ua, ok := ms[i].Addr.(*net.UDPAddr); ok {
				b := ms[i].Buffers[0][:ms[i].N]
				size := 0
				if ms[i].NN > 0 {
					size = segmentSize(ms[i].OOB[:ms[i].NN])
				}
				if size > 0 && len(b) > size {
					f.groReads.Add(1)
					for ; len(b) > size; b = b[size:] {
						f.dispatch(b[:size], ua)
					}
				}
				f.dispatch(b, ua)
			}
			ms[i].Addr, ms[i].NN = nil, 0
		}
	}
}

// readOne reads one datagram into ms[0], as ReadBatch would.
func (f *frontDoor) readOne(ms []ipv4.Message, _ int) (int, error) {
	n, addr, err := f.pc.ReadFrom(ms[0].Buffers[0])
	if err != nil {
		return 0, err
	}
	ms[0].N, ms[0].Addr = n, addr
	return 1, nil
}

// dispatch passes one datagram on according to its sender's flow,
// starting one for a new sender.
func (f *frontDoor) dispatch(d []byte, from *net.UDPAddr) {
	ap := from.AddrPort()
	ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	f.mu.Lock()
	fl := f.flows[ap]
	if fl == nil {
		if fl = f.newFlow(d, from, ap); fl == nil {
			f.mu.Unlock()
			return // over the limits: dropped, as by a busy server
		}
	}
	fl.touch()
	switch fl.state {
	case flowRelay:
		if id, ok := quicinitial.ShortDCID(d, f.cids.n); ok {
			fl.cid = cidKeyOf(id)
		}
		f.mu.Unlock()
		f.deliver(d, fl.addr)
	case flowCover:
		up := fl.up
		f.mu.Unlock()
		up.Write(d)
	case flowJudging:
		f.judge(fl, d)
		f.mu.Unlock()
	}
}

// newFlow starts the flow of a sender the door has not seen, or returns
// nil if the limits on unauthenticated flows leave no room. f.mu is held.
func (f *frontDoor) newFlow(d []byte, addr *net.UDPAddr, ap netip.AddrPort) *flow {
	fl := &flow{addr: addr, born: time.Now()}
	if dcid, ok := quicinitial.ShortDCID(d, f.cids.n); ok && f.cids.valid(dcid) {
		// A key holder's connection from a new address.
		if f.rebound >= f.maxFlows {
			return nil
		}
		fl.state, fl.rebound = flowRelay, true
		f.rebound++
		f.flows[ap] = fl
		return fl
	}
	src := sourceNet(ap.Addr())
	if len(f.perSource[src]) >= f.maxPerSource && !f.evict(f.perSource[src], fl.born) {
		return nil
	}
	if f.unauth >= f.maxFlows && !f.evictAny(fl.born) {
		return nil
	}
	h, err := quicinitial.ParseLong(d)
	if err == nil && h.Version == quicinitial.Version1 && h.Type == quicinitial.TypeInitial && len(d) >= minInitialSize {
		fl.state = flowJudging
		fl.col = &quicinitial.Collector{}
	} else if !f.toCover(fl) {
		return nil
	}
	fl.src = src
	f.unauth++
	f.perSource[src] = append(f.perSource[src], fl)
	f.flows[ap] = fl
	return fl
}

// evict ends the cover flow among flows that has been quiet longest, if
// it has been quiet for evictQuiet, and reports whether it did. f.mu is
// held.
func (f *frontDoor) evict(flows []*flow, now time.Time) bool {
	var victim *flow
	for _, fl := range flows {
		if fl.state == flowCover && (victim == nil || fl.last.Load() < victim.last.Load()) {
			victim = fl
		}
	}
	if victim == nil || now.Sub(time.Unix(0, victim.last.Load())) < evictQuiet {
		return false
	}
	f.remove(victim)
	return true
}

// evictAny is evict over every source's flows, at most once per
// evictScanEvery (a scan of every flow; a flood at the global cap is
// dropped between scans). f.mu is held.
func (f *frontDoor) evictAny(now time.Time) bool {
	if now.Sub(f.lastScan) < evictScanEvery {
		return false
	}
	f.lastScan = now
	var victim *flow
	for _, flows := range f.perSource {
		for _, fl := range flows {
			if fl.state == flowCover && (victim == nil || fl.last.Load() < victim.last.Load()) {
				victim = fl
			}
		}
	}
	if victim == nil {
		return false
	}
	return f.evict([]*flow{victim}, now)
}

// judge reads d, a datagram of a flow still being judged, and decides the
// flow once the hello's random is there. f.mu is held.
func (f *frontDoor) judge(fl *flow, d []byte) {
	over := len(fl.queue) >= judgeDatagrams || fl.queued+len(d) > judgeBytes
	if fl.judging {
		if !over {
			fl.queue = append(fl.queue, append([]byte(nil), d...))
			fl.queued += len(d)
		}
		return // else dropped, as by a busy server
	}
	fl.queue = append(fl.queue, append([]byte(nil), d...))
	fl.queued += len(d)
	if over {
		f.decide(fl, false) // not a QUIC client's first flight
		return
	}
	if err := fl.col.Add(d); err != nil && !errors.Is(err, quicinitial.ErrNotInit) {
		f.decide(fl, false)
		return
	}
	// The whole hello: its random carries the token, sealed under its
	// X25519 key share (Chromium's fits in two datagrams).
	msg, ok := fl.col.ClientHello()
	if !ok {
		return
	}
	h, err := hello.Parse(append([]byte{22, 3, 1, byte(len(msg) >> 8), byte(len(msg))}, msg...))
	if err != nil || len(h.Random) != 32 || len(msg) > 0xffff {
		f.decide(fl, false)
		return
	}
	random := [32]byte(h.Random)
	share := h.X25519Share
	// A sealed token costs one X25519; a plain one from an older link
	// HMACs per key. The read loop goes on meanwhile, and the flow's
	// datagrams wait in its queue.
	fl.judging = true
	f.wg.Go(func() {
		key, err := f.auth.Authenticate(RandomProof(random, share))
		f.mu.Lock()
		defer f.mu.Unlock()
		if fl.state != flowJudging {
			return // swept meanwhile
		}
		fl.key, fl.random = key, random
		f.decide(fl, err == nil)
	})
}

// decide ends the judging of fl: a key holder's flow goes to quic-go,
// anyone else's to the cover site, each with the datagrams kept so far.
// f.mu is held.
func (f *frontDoor) decide(fl *flow, keyHolder bool) {
	queue := fl.queue
	fl.queue, fl.queued, fl.col, fl.judging = nil, 0, nil, false
	if keyHolder {
		fl.state = flowRelay
		f.release(fl)
		for _, d := range queue {
			f.deliver(d, fl.addr)
		}
		return
	}
	if !f.toCover(fl) {
		f.remove(fl)
		return
	}
	for _, d := range queue {
		fl.up.Write(d)
	}
}

// toCover makes fl a cover flow, with a socket of its own to the cover
// site and a goroutine that sends the cover's answers back to the client.
func (f *frontDoor) toCover(fl *flow) bool {
	select {
	case <-f.closed:
		return false
	default:
	}
	var up net.Conn
	var err error
	if f.dialCover != nil {
		up, err = f.dialCover()
	} else {
		up, err = net.DialUDP("udp", nil, f.cover)
	}
	if err != nil {
		f.log.Debug("quic front door: socket to the cover site", "err", err)
		return false
	}
	fl.state, fl.up = flowCover, up
	f.wg.Go(func() {
		buf := make([]byte, maxDatagram)
		for {
			n, err := up.Read(buf)
			if errors.Is(err, syscall.ECONNREFUSED) {
				// An ICMP error from the cover site (its UDP port
				// closed): the client, as from a host that drops, hears
				// nothing.
				continue
			}
			if err != nil {
				return // closed
			}
			fl.touch()
			f.pc.WriteTo(buf[:n], fl.addr)
		}
	})
	return true
}

// keyOf returns the key whose hello opened the flow of addr, and that
// hello's random, or nil.
func (f *frontDoor) keyOf(addr net.Addr) (transport.Key, [32]byte) {
	ua, ok := addr.(*net.UDPAddr)
	if !ok {
		return nil, [32]byte{}
	}
	ap := ua.AddrPort()
	f.mu.Lock()
	defer f.mu.Unlock()
	if fl := f.flows[netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())]; fl != nil && fl.state == flowRelay {
		return fl.key, fl.random
	}
	return nil, [32]byte{}
}

// deliver queues d for quic-go; a full queue drops it, as a full socket
// buffer would.
func (f *frontDoor) deliver(d []byte, addr *net.UDPAddr) {
	dg := datagram{addr: addr}
	if len(d) <= datagramBuf {
		dg.bp = datagramPool.Get().(*[]byte)
		dg.b = append((*dg.bp)[:0], d...)
	} else {
		dg.b = append([]byte(nil), d...)
	}
	select {
	case f.in <- dg:
	default:
		if dg.bp != nil {
			datagramPool.Put(dg.bp)
		}
	}
}

// release stops counting fl as unauthenticated. f.mu is held.
func (f *frontDoor) release(fl *flow) {
	if !fl.src.IsValid() {
		return
	}
	f.unauth--
	flows := f.perSource[fl.src]
	if i := slices.Index(flows, fl); i >= 0 {
		flows = slices.Delete(flows, i, i+1)
	}
	if len(flows) == 0 {
		delete(f.perSource, fl.src)
	} else {
		f.perSource[fl.src] = flows
	}
	fl.src = netip.Prefix{}
}

// remove forgets fl and closes its cover socket. f.mu is held.
func (f *frontDoor) remove(fl *flow) {
	f.release(fl)
	if fl.rebound {
		f.rebound--
		fl.rebound = false
	}
	ap := fl.addr.AddrPort()
	delete(f.flows, netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()))
	if fl.up != nil {
		fl.up.Close()
	}
	fl.state = flowCover // a late judgement must not revive it
}

// sweepLoop runs sweep every second.
func (f *frontDoor) sweepLoop() {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-f.closed:
			return
		case now := <-t.C:
			f.sweep(now)
		}
	}
}

// sweep ends idle flows, judges the undecided after judgeTimeout, and
// keeps the connection IDs that relay flows use reserved.
func (f *frontDoor) sweep(now time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	inUse := f.inUse[:0]
	for _, fl := range f.flows {
		switch {
		case now.Sub(time.Unix(0, fl.last.Load())) > f.idle:
			f.remove(fl)
		case fl.state == flowJudging && !fl.judging && now.Sub(fl.born) > judgeTimeout:
			f.decide(fl, false)
		case fl.state == flowRelay && fl.cid != cidKey{}:
			inUse = append(inUse, fl.cid)
		}
	}
	f.cids.keep(inUse, now)
	f.inUse = inUse
}

// sourceNet returns the network a source address is counted in: its /24
// for IPv4, its /56 for IPv6.
func sourceNet(a netip.Addr) netip.Prefix {
	bits := 56
	if a.Is4() {
		bits = 24
	}
	p, _ := a.Prefix(bits)
	return p
}

// cidGen makes the relay's connection IDs: n bytes, random but for a MAC
// of the random part under a secret of the listener's at their end, so
// that the front door recognises a key holder's connection arriving from
// a new address (RFC 9000 section 9.3) by its ID alone (4-byte IDs, whose
// MAC is one byte, must also be reserved; see below). To anyone else the
// IDs are random.
//
// No two connections may share an ID: quic-go gives a new connection its
// first ID even if a live connection has it, whose packets then go to the
// new one, which cannot read them, and it dies at its idle timeout. With
// random IDs alone that happens to a share of new connections that grows
// with the live ones over the number of possible IDs: with 4-byte IDs
// (quic-go's own length, and so Caddy's, whose length the relay takes on)
// and half of them a MAC, 2^16, it was 1 in 50 new connections at 3,000
// live ones. So the generator keeps the IDs it made, and those the front
// door sees in use (see [frontDoor.sweep]), reserved for ttl after they
// were made or last seen, and makes none equal to a reserved one.
type cidGen struct {
	n      int // bytes of an ID
	macLen int // bytes of its MAC, at its end
	secret [32]byte
	ttl    time.Duration

	mu         sync.Mutex
	reserved   map[cidKey]int64 // until when (Unix nanoseconds)
	lastExpire time.Time
}

// cidKey is a connection ID as a map key: its bytes, then zeros.
type cidKey [maxCIDLen]byte

// Connection ID lengths (RFC 9000 section 17.2 allows 0 to 20; the MAC
// needs a few bytes, and the random part more).
const (
	minCIDLen = 4
	maxCIDLen = 20
	// minCIDRandom is the least random bytes an ID has: 4-byte IDs get a
	// 1-byte MAC and 2^24 values rather than half and half.
	minCIDRandom = 3
	// strongMAC is the least MAC bytes that the front door trusts alone;
	// a shorter MAC, which one in 256 random IDs passes, counts only for
	// an ID that is reserved (made or seen in use lately).
	strongMAC = 2
	// cidTries bounds the draws of one ID; each hits a reserved one with
	// the odds of reserved IDs over possible ones.
	cidTries = 64
)

var _ quic.ConnectionIDGenerator = (*cidGen)(nil)

// newCIDGen returns a generator of n-byte IDs that stay reserved for ttl
// after they were made or last seen in use.
func newCIDGen(n int, ttl time.Duration) (*cidGen, error) {
	if n < minCIDLen || n > maxCIDLen {
		return nil, fmt.Errorf("connection ID length %d: want %d to %d", n, minCIDLen, maxCIDLen)
	}
	g := &cidGen{n: n, macLen: min(n/2, n-minCIDRandom), ttl: ttl, reserved: map[cidKey]int64{}}
	rand.Read(g.secret[:])
	return g, nil
}

func (g *cidGen) mac(random []byte) []byte {
	m := hmac.New(sha256.New, g.secret[:])
	m.Write(random)
	return m.Sum(nil)[:g.macLen]
}

func (g *cidGen) GenerateConnectionID() (quic.ConnectionID, error) {
	b := make([]byte, g.n)
	r := g.n - g.macLen
	now := time.Now()
	g.mu.Lock()
	defer g.mu.Unlock()
	for range cidTries {
		rand.Read(b[:r])
		copy(b[r:], g.mac(b[:r]))
		k := cidKeyOf(b)
		if _, taken := g.reserved[k]; !taken {
			g.reserved[k] = now.Add(g.ttl).UnixNano()
			return quic.ConnectionIDFromBytes(b), nil
		}
	}
	return quic.ConnectionID{}, fmt.Errorf("quiccarrier: no free %d-byte connection ID in %d draws (%d reserved)", g.n, cidTries, len(g.reserved))
}

func (g *cidGen) ConnectionIDLen() int { return g.n }

// cidKeyOf returns id as a map key.
func cidKeyOf(id []byte) cidKey {
	var k cidKey
	copy(k[:], id)
	return k
}

// valid reports whether id is one of the relay's.
func (g *cidGen) valid(id []byte) bool {
	if len(id) != g.n {
		return false
	}
	r := g.n - g.macLen
	if !hmac.Equal(id[r:], g.mac(id[:r])) {
		return false
	}
	if g.macLen >= strongMAC {
		return true
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	_, ok := g.reserved[cidKeyOf(id)]
	return ok
}

// keep reserves ids, seen in use at now, for another ttl, and lets the
// reservations end that ran out (a scan of them all, at most every
// ttl/8).
func (g *cidGen) keep(ids []cidKey, now time.Time) {
	until := now.Add(g.ttl).UnixNano()
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, k := range ids {
		g.reserved[k] = until
	}
	if now.Sub(g.lastExpire) < g.ttl/8 {
		return
	}
	g.lastExpire = now
	for k, t := range g.reserved {
		if t < now.UnixNano() {
			delete(g.reserved, k)
		}
	}
}
