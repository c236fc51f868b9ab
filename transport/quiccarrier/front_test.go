package quiccarrier

import (
	"bytes"
	"crypto/rand"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/merpati/merpati/transport/auth"
	"github.com/merpati/merpati/transport/hello/quicinitial"
)

// doorRig is a frontDoor on loopback in front of a UDP socket standing in
// for the cover site.
type doorRig struct {
	door  *frontDoor
	cover net.PacketConn
	addr  *net.UDPAddr // the door's
	key   auth.Key
}

func startDoor(t *testing.T, maxFlows, perSource int) *doorRig {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cover, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cover.Close() })
	cids, err := newCIDGen(8, DefaultFlowIdle)
	if err != nil {
		t.Fatal(err)
	}
	key := auth.NewKey()
	door := newFrontDoor(pc, cover.LocalAddr().(*net.UDPAddr), &testAuth{keys: []auth.Key{key}}, cids,
		maxFlows, perSource, DefaultFlowIdle, slog.New(slog.DiscardHandler))
	t.Cleanup(func() { door.Close() })
	return &doorRig{door: door, cover: cover, addr: pc.LocalAddr().(*net.UDPAddr), key: key}
}

// client returns a UDP socket on loopback address ip.
func client(t *testing.T, ip string) net.PacketConn {
	t.Helper()
	c, err := net.ListenPacket("udp", ip+":0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// expect reads one datagram from pc within a generous time, or fails.
func expect(t *testing.T, pc net.PacketConn, want []byte) net.Addr {
	t.Helper()
	pc.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 2048)
	n, from, err := pc.ReadFrom(buf)
	if err != nil {
		t.Fatalf("nothing arrived: %v", err)
	}
	if !bytes.Equal(buf[:n], want) {
		t.Fatalf("got %d bytes %x…, want %d bytes", n, buf[:min(n, 16)], len(want))
	}
	return from
}

// expectNone checks that nothing arrives at pc for a while.
func expectNone(t *testing.T, pc net.PacketConn) {
	t.Helper()
	pc.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	buf := make([]byte, 2048)
	if n, _, err := pc.ReadFrom(buf); err == nil {
		t.Fatalf("%d bytes arrived, want none", n)
	}
}

var testDCID = []byte{1, 2, 3, 4, 5, 6, 7, 8}

// fakeHello is a handshake message of n bytes that starts like a
// ClientHello.
func fakeHello(n int) []byte {
	m := make([]byte, n)
	rand.Read(m)
	m[0] = 1
	m[1], m[2], m[3] = byte((n-4)>>16), byte((n-4)>>8), byte(n-4)
	return m
}

// clientHello returns a minimal TLS 1.3 ClientHello handshake message
// with random and an X25519 key share.
func clientHello(random [32]byte) []byte {
	share := make([]byte, 32)
	rand.Read(share)
	var ext []byte
	ext = append(ext, 0, 43, 0, 3, 2, 3, 4) // supported_versions: TLS 1.3
	ext = append(ext, 0, 51, 0, 38, 0, 36, 0, 29, 0, 32)
	ext = append(ext, share...) // key_share: X25519
	body := []byte{3, 3}
	body = append(body, random[:]...)
	body = append(body, 0)                // no session id
	body = append(body, 0, 2, 0x13, 0x01) // TLS_AES_128_GCM_SHA256
	body = append(body, 1, 0)             // null compression
	body = append(body, byte(len(ext)>>8), byte(len(ext)))
	body = append(body, ext...)
	return append([]byte{1, 0, byte(len(body) >> 8), byte(len(body))}, body...)
}

// initialWith returns a client Initial datagram whose ClientHello has
// random.
func initialWith(random [32]byte) []byte {
	return quicinitial.SealInitial(testDCID, 0, quicinitial.AppendCrypto(nil, 0, clientHello(random)), 1250)
}

// TestFrontDoorRoutes: garbage and a stranger's Initial reach the cover
// site unchanged and its answer returns from the door's port; a key
// holder's Initial reaches quic-go's side instead, and nothing of it the
// cover site; a short header packet for one of the relay's connection IDs
// from a new address (a rebound NAT) reaches quic-go too.
func TestFrontDoorRoutes(t *testing.T) {
	r := startDoor(t, 16, 16)

	stranger := client(t, "127.0.0.1")
	garbage := []byte("GET / HTTP/1.1\r\n\r\n")
	stranger.WriteTo(garbage, r.addr)
	from := expect(t, r.cover, garbage)
	r.cover.WriteTo([]byte("answer"), from)
	expect(t, stranger, []byte("answer"))

	browser := client(t, "127.0.0.1")
	var random [32]byte
	copy(random[:], bytes.Repeat([]byte{7}, 32))
	d := initialWith(random)
	browser.WriteTo(d, r.addr)
	expect(t, r.cover, d)

	holder := client(t, "127.0.0.1")
	good, err := NewRandom(r.key, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	d = initialWith(good)
	holder.WriteTo(d, r.addr)
	r.door.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 2048)
	n, addr, err := r.door.ReadFrom(buf)
	if err != nil || !bytes.Equal(buf[:n], d) || addr.String() != holder.LocalAddr().String() {
		t.Fatalf("quic-go side read %d bytes from %v, %v", n, addr, err)
	}
	expectNone(t, r.cover)

	// The same Initial from another address: a replay, for the cover.
	replayer := client(t, "127.0.0.1")
	replayer.WriteTo(d, r.addr)
	expect(t, r.cover, d)

	cid, _ := r.door.cids.GenerateConnectionID()
	short := append([]byte{0x41}, cid.Bytes()...)
	short = append(short, bytes.Repeat([]byte{9}, 30)...)
	rebound := client(t, "127.0.0.1")
	rebound.WriteTo(short, r.addr)
	n, _, err = r.door.ReadFrom(buf)
	if err != nil || !bytes.Equal(buf[:n], short) {
		t.Fatalf("rebound key holder's packet: %d bytes, %v", n, err)
	}
	// A short header packet for an ID the relay never made: the cover's.
	forged := bytes.Clone(short)
	forged[1] ^= 0xff
	client(t, "127.0.0.1").WriteTo(forged, r.addr)
	expect(t, r.cover, forged)
}

// TestFrontDoorRebound: key holders' flows that the door judged by their
// hello do not count against the cap of those that arrive by connection
// ID from a new address (a rebound NAT), which is MaxUnauthFlows: a relay
// with more sessions than that still lets a rebound one in. The relay
// flows keep the IDs they use reserved.
func TestFrontDoorRebound(t *testing.T) {
	r := startDoor(t, 2, 16)
	buf := make([]byte, 2048)
	read := func(want []byte) {
		t.Helper()
		r.door.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, _, err := r.door.ReadFrom(buf)
		if err != nil || !bytes.Equal(buf[:n], want) {
			t.Fatalf("quic-go side read %d bytes, %v", n, err)
		}
	}
	short := func() []byte {
		cid, err := r.door.cids.GenerateConnectionID()
		if err != nil {
			t.Fatal(err)
		}
		return append(append([]byte{0x41}, cid.Bytes()...), bytes.Repeat([]byte{9}, 30)...)
	}
	for range 4 { // twice the cap: the old rule counted every flow
		random, err := NewRandom(r.key, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		d := initialWith(random)
		client(t, "127.0.0.1").WriteTo(d, r.addr)
		read(d)
	}
	for range 2 {
		d := short()
		client(t, "127.0.0.1").WriteTo(d, r.addr)
		read(d)
	}
	d := short()
	client(t, "127.0.0.1").WriteTo(d, r.addr)
	r.door.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if n, _, err := r.door.ReadFrom(buf); err == nil {
		t.Fatalf("a third rebound flow over the cap of 2: %d bytes passed", n)
	}
	expectNone(t, r.cover)

	// The sweep keeps what relay flows use reserved.
	r.door.sweep(time.Now())
	r.door.mu.Lock()
	inUse := len(r.door.inUse)
	r.door.mu.Unlock()
	if inUse != 2 {
		t.Errorf("%d connection IDs seen in use, want the 2 rebound flows'", inUse)
	}
}

// TestFrontDoorLimits: past the per-source cap, datagrams from new
// addresses of that network are dropped; another network is unaffected,
// and a flow that ends frees its place.
func TestFrontDoorLimits(t *testing.T) {
	r := startDoor(t, 16, 2)
	for i := range 2 {
		c := client(t, "127.0.0.1")
		msg := []byte{byte(i), 'x'}
		c.WriteTo(msg, r.addr)
		expect(t, r.cover, msg)
	}
	over := client(t, "127.0.0.1")
	over.WriteTo([]byte("over"), r.addr)
	expectNone(t, r.cover)

	other := client(t, "127.0.1.1")
	other.WriteTo([]byte("other net"), r.addr)
	expect(t, r.cover, []byte("other net"))

	// Once the network's flows are quiet, a new client takes the place
	// of the one quiet longest: a prober that connects again and again
	// is answered every time.
	r.door.mu.Lock()
	quiet := time.Now().Add(-2 * evictQuiet).UnixNano()
	for _, fl := range r.door.flows {
		fl.last.Store(quiet)
		quiet++
	}
	r.door.mu.Unlock()
	over.WriteTo([]byte("over, later"), r.addr)
	expect(t, r.cover, []byte("over, later"))
	r.door.mu.Lock()
	n, unauth := len(r.door.flows), r.door.unauth
	r.door.mu.Unlock()
	if n != 3 || unauth != 3 {
		t.Fatalf("after an eviction: %d flows, %d unauthenticated; want 3 (2 of one network, 1 of another)", n, unauth)
	}

	// Sweep as if the flows had idled out.
	r.door.sweep(time.Now().Add(2 * DefaultFlowIdle))
	r.door.mu.Lock()
	n, unauth = len(r.door.flows), r.door.unauth
	r.door.mu.Unlock()
	if n != 0 || unauth != 0 {
		t.Fatalf("after the sweep: %d flows, %d unauthenticated", n, unauth)
	}
	over.WriteTo([]byte("again"), r.addr)
	expect(t, r.cover, []byte("again"))
}

// TestFrontDoorJudgeTimeout: a first Initial whose hello never shows its
// start is sent on to the cover site after the judging time.
func TestFrontDoorJudgeTimeout(t *testing.T) {
	r := startDoor(t, 16, 16)
	msg := fakeHello(1800)
	d := quicinitial.SealInitial(testDCID, 0, quicinitial.AppendCrypto(nil, 900, msg[900:1500]), 1250)
	c := client(t, "127.0.0.1")
	c.WriteTo(d, r.addr)
	expectNone(t, r.cover)
	r.door.sweep(time.Now().Add(2 * judgeTimeout))
	expect(t, r.cover, d)
}

func TestCIDGen(t *testing.T) {
	for _, n := range []int{4, 5, 8, 20} {
		g, err := newCIDGen(n, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		id, _ := g.GenerateConnectionID()
		if id.Len() != n || !g.valid(id.Bytes()) {
			t.Errorf("%d: %x not valid", n, id.Bytes())
		}
		other, _ := newCIDGen(n, time.Minute)
		// A 2-byte MAC passes another secret once in 65,536 tries; a
		// 1-byte one counts only with the reservation.
		if other.valid(id.Bytes()) && (n >= 8 || other.macLen < strongMAC) {
			t.Errorf("%d: another listener's generator accepted %x", n, id.Bytes())
		}
	}
	for _, n := range []int{0, 3, 21} {
		if _, err := newCIDGen(n, time.Minute); err == nil {
			t.Errorf("length %d accepted", n)
		}
	}
}

// TestCIDGenUnique: no two connection IDs a generator makes are equal,
// even 4-byte ones (quic-go's length, which the relay takes on from a
// Caddy cover) by the tens of thousands: quic-go gives a new connection
// its ID even if a live one has it, which then dies. (Half random and half
// MAC, 40,000 4-byte IDs came out with about 10,000 repeats.)
func TestCIDGenUnique(t *testing.T) {
	g, err := newCIDGen(4, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for i := range 40000 {
		id, err := g.GenerateConnectionID()
		if err != nil {
			t.Fatalf("ID %d: %v", i, err)
		}
		if seen[string(id.Bytes())] {
			t.Fatalf("ID %d, %x, made before", i, id.Bytes())
		}
		seen[string(id.Bytes())] = true
		if !g.valid(id.Bytes()) {
			t.Fatalf("ID %d, %x, not valid", i, id.Bytes())
		}
	}
}

// TestCIDGenReserve: an ID stays reserved for the TTL after it was made,
// longer while it is seen in use; a 4-byte ID (1-byte MAC) is valid only
// while reserved, so that one random ID in 256 does not pass.
func TestCIDGenReserve(t *testing.T) {
	const ttl = time.Minute
	g, err := newCIDGen(4, ttl)
	if err != nil {
		t.Fatal(err)
	}
	used, _ := g.GenerateConnectionID()
	unused, _ := g.GenerateConnectionID()
	start := time.Now()
	g.keep([]cidKey{cidKeyOf(used.Bytes())}, start.Add(ttl/2))
	g.keep(nil, start.Add(ttl+time.Second))
	if !g.valid(used.Bytes()) {
		t.Errorf("the ID in use was let go")
	}
	if g.valid(unused.Bytes()) {
		t.Errorf("the ID never seen in use is still reserved after the TTL")
	}
	g.keep(nil, start.Add(2*ttl))
	if g.valid(used.Bytes()) || len(g.reserved) != 0 {
		t.Errorf("%d IDs still reserved a TTL after their last use", len(g.reserved))
	}
	// MAC right, never made: one in 256 random IDs.
	b := []byte{1, 2, 3, 0}
	b[3] = g.mac(b[:3])[0]
	if g.valid(b) {
		t.Errorf("an ID the generator did not make passed on its 1-byte MAC")
	}
}

// FuzzQUICFrontDoor sends arbitrary datagrams from a few addresses through
// the door's dispatch and checks its books.
func FuzzQUICFrontDoor(f *testing.F) {
	var random [32]byte
	f.Add(initialWith(random), []byte{0x40, 1, 2, 3}, uint8(0))
	f.Add([]byte("junk"), initialWith(random), uint8(3))
	cids, _ := newCIDGen(8, time.Minute)
	f.Fuzz(func(t *testing.T, a, b []byte, who uint8) {
		door := &frontDoor{
			auth: &testAuth{}, cids: cids,
			// No socket to the cover site: such flows are dropped, as
			// when the relay is out of sockets. (Cover flows, each with
			// a goroutine, slow the fuzzer a hundredfold; the unit tests
			// above cover them.)
			dialCover: func() (net.Conn, error) { return nil, errors.New("no sockets") },
			log:       slog.New(slog.DiscardHandler),
			maxFlows:  4, maxPerSource: 2, idle: time.Minute,
			in: make(chan datagram, inQueue), closed: make(chan struct{}),
			flows: map[netip.AddrPort]*flow{}, perSource: map[netip.Prefix][]*flow{},
		}
		for i, d := range [][]byte{a, b, a} {
			from := &net.UDPAddr{IP: net.IPv4(127, 0, byte(who%3), 1), Port: 1000 + (i+int(who))%2}
			door.dispatch(d, from)
		}
		// Wait for the judgements.
		for judging := true; judging; {
			door.mu.Lock()
			judging = false
			for _, fl := range door.flows {
				judging = judging || fl.judging
			}
			door.mu.Unlock()
			if judging {
				time.Sleep(100 * time.Microsecond)
			}
		}
		door.mu.Lock()
		unauth := 0
		for _, fl := range door.flows {
			if fl.state != flowRelay {
				unauth++
			}
		}
		if unauth != door.unauth || door.unauth > door.maxFlows || len(door.in) > 3 {
			t.Errorf("%d unauthenticated flows, counted %d (cap %d)", unauth, door.unauth, door.maxFlows)
		}
		rebound := 0
		for _, fl := range door.flows {
			if fl.rebound {
				rebound++
			}
		}
		if rebound != door.rebound || door.rebound > door.maxFlows {
			t.Errorf("%d flows arrived by connection ID, counted %d (cap %d)", rebound, door.rebound, door.maxFlows)
		}
		for _, fl := range door.flows {
			door.remove(fl)
		}
		door.mu.Unlock()
		door.wg.Wait()
	})
}

// TestCheckCover: a cover site with HTTP/3 answers, with its connection ID
// length; a UDP port with nothing behind it fails at once (ICMP port
// unreachable), not after a handshake timeout.
func TestCheckCover(t *testing.T) {
	cov := startCover(t)
	info, err := CheckCover(t.Context(), cov.addr, testSNI)
	if err != nil {
		t.Fatal(err)
	}
	if info.ConnIDLen != 4 { // upstream quic-go's
		t.Errorf("connection ID length %d, want 4", info.ConnIDLen)
	}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := pc.LocalAddr().String()
	pc.Close()
	start := time.Now()
	if _, err := CheckCover(t.Context(), closed, testSNI); !errors.Is(err, ErrNoHTTP3) {
		t.Fatalf("closed port: %v, want ErrNoHTTP3", err)
	}
	// quic-go's handshake timeout is 10 s; the ICMP error comes at once.
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("a closed port took %v to tell", took)
	}
}

// TestFrontDoorReadFromDeadline: ReadFrom on an empty door returns at its
// read deadline, and with net.ErrClosed once the door closes.
func TestFrontDoorReadFromDeadline(t *testing.T) {
	r := startDoor(t, 16, 16)
	r.door.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	if _, _, err := r.door.ReadFrom(make([]byte, 2048)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("ReadFrom past the deadline: %v, want a time-out", err)
	}
	r.door.SetReadDeadline(time.Time{})
	done := make(chan error, 1)
	go func() {
		_, _, err := r.door.ReadFrom(make([]byte, 2048))
		done <- err
	}()
	r.door.Close()
	if err := <-done; !errors.Is(err, net.ErrClosed) {
		t.Fatalf("ReadFrom on a closed door: %v, want net.ErrClosed", err)
	}
}
