package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/merpati/merpati/transport/hello"
	"github.com/merpati/merpati/transport/link"
	"github.com/merpati/merpati/transport/mtproxy"
	"github.com/merpati/merpati/transport/mtproxy/mtproxytest"
)

// The paths, in the order of the table.
var allPaths = []string{"tls", "plain-tls", "quic", "plain-quic", "mtproxy", "splice"}

// The tests, in the order they run in each round.
var allTests = []string{"1", "100", "open", "rtt", "rtt-load", "hs", "idle", "idle-stream"}

// hsPaths are the paths with a handshake of their own (test hs);
// idlePaths those whose idle sessions test idle measures.
var (
	hsPaths   = []string{"tls", "plain-tls", "quic", "plain-quic"}
	idlePaths = allPaths
	// streamIdlePaths are those whose idle sessions test idle-stream
	// measures with a stream open (the others' sessions are streams).
	streamIdlePaths = hsPaths
)

// twoConnPaths are the paths whose relay side holds two TCP connections
// per idle session (the app's and the datacenter's); with a stream open
// (test idle-stream), the TCP paths do too.
var twoConnPaths = []string{"mtproxy", "splice"}

// coverName is the relay's server name (its link's sni).
const coverName = "cover.bench.test"

// Datacenter numbers of the relay's --dc overrides: the carriers' streams
// go to dcPlain by address, MTProxy apps to dcObfs by number.
const (
	dcPlain = 2
	dcObfs  = 3
)

// openConcurrencyApp is how many streams the app opens at a time before a
// test of many streams: under the relay's cap of unauthenticated
// connections per source network, which MTProxy handshakes count against.
const openConcurrencyApp = 8

// settle is how long the idle test lets a server settle before reading
// its memory.
const settle = 3 * time.Second

type benchConfig struct {
	bin        string
	only       []string
	tests      []string
	count      int
	size       int64
	psize      int64
	streams    int
	buf        int
	opens      int
	rtts       int
	handshakes int
	sessions   []int
	idleWindow time.Duration
	workdir    string
	keep       bool
	verbose    bool
}

func cmdRun(ctx context.Context, args []string, stdout, stderr io.Writer) (err error) {
	fs := newFlagSet("run", stderr)
	var c benchConfig
	fs.StringVar(&c.bin, "bin", "", "directory holding the merpati and merpati-relay binaries (required)")
	only := fs.String("only", strings.Join(allPaths, ","), "paths to run, comma-separated")
	tests := fs.String("tests", strings.Join(allTests, ","), "tests to run, comma-separated")
	fs.IntVar(&c.count, "count", 3, "rounds; the table shows medians")
	size, psize, buf := sizeValue(1<<30), sizeValue(10<<20), sizeValue(64<<10)
	fs.Var(&size, "size", "bytes of the one-stream transfers (each direction)")
	fs.Var(&psize, "psize", "bytes of each stream of the many-streams transfers")
	fs.Var(&buf, "buf", "read and write size of every benchnet process")
	fs.IntVar(&c.streams, "streams", 100, "streams of the many-streams transfers")
	fs.IntVar(&c.opens, "opens", 1000, "streams opened one after another by test open")
	fs.IntVar(&c.rtts, "rtts", 2000, "round trips of test rtt")
	fs.IntVar(&c.handshakes, "handshakes", 300, "sessions or connections opened by test hs")
	sessions := fs.String("sessions", "1000,10000", "idle sessions held by test idle, comma-separated")
	fs.DurationVar(&c.idleWindow, "idle-window", 15*time.Second, "how long test idle reads the CPU of idle sessions (the carriers ping every 15 s)")
	fs.StringVar(&c.workdir, "workdir", "", "directory for relay directories, certificates and logs (default: a new temporary one)")
	fs.BoolVar(&c.keep, "keep", false, "keep the work directory")
	fs.BoolVar(&c.verbose, "v", false, "print each measurement as it is made")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if c.bin == "" {
		return errors.New("run: --bin is required")
	}
	if c.only, err = pickList("--only", *only, allPaths); err != nil {
		return err
	}
	if c.tests, err = pickList("--tests", *tests, allTests); err != nil {
		return err
	}
	for _, s := range strings.Split(*sessions, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n <= 0 {
			return fmt.Errorf("run: --sessions %q: want positive counts", *sessions)
		}
		c.sessions = append(c.sessions, n)
	}
	if c.count < 1 || c.streams < 1 || c.opens < 1 || c.rtts < 1 || c.handshakes < 1 {
		return errors.New("run: --count, --streams, --opens, --rtts and --handshakes must be positive")
	}
	c.buf = int(buf)
	// Whole --buf packets on the wire: the relay's MTProxy mode cuts the
	// datacenter's stream at MTProto packets.
	c.size = roundUp(int64(size), int64(buf))
	c.psize = roundUp(int64(psize), int64(buf))

	l := &lab{cfg: c, out: stdout, res: results{}}
	// The logs outlive a failure.
	defer func() { l.close(err != nil) }()
	if err = l.setup(ctx); err != nil {
		return err
	}
	err = l.measure(ctx)
	l.report(stdout)
	if errors.Is(err, errStop) {
		return fmt.Errorf("run: interrupted; the table holds the rounds done: %w", ctx.Err())
	}
	return err
}

func roundUp(n, m int64) int64 { return (n + m - 1) / m * m }

// pickList parses a comma-separated subset of all, keeping all's order.
func pickList(name, v string, all []string) ([]string, error) {
	want := map[string]bool{}
	for _, s := range strings.Split(v, ",") {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		if !slices.Contains(all, s) {
			return nil, fmt.Errorf("run: %s: unknown %q (want some of %s)", name, s, strings.Join(all, ","))
		}
		want[s] = true
	}
	var out []string
	for _, s := range all {
		if want[s] {
			out = append(out, s)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("run: %s: empty", name)
	}
	return out, nil
}

// A stream is an app's connection to the fake DC along one path.
type stream interface {
	io.ReadWriteCloser
	CloseWrite() error
}

// A path is one way from the app to the fake DC.
type path struct {
	name string
	// client and server are the client-side and relay-side processes
	// whose CPU is measured; client is nil where the app speaks to the
	// relay side itself.
	client, server *proc
	// open opens a stream to the DC, ready for its header.
	open func() (stream, error)
	// hsAddr is where test hs and idle open sessions or connections.
	hsAddr string
}

// results holds every measurement: path → metric → one value per round.
type results map[string]map[string][]float64

func (r results) add(path, metric string, v float64) {
	if r[path] == nil {
		r[path] = map[string][]float64{}
	}
	r[path][metric] = append(r[path][metric], v)
}

// lab is the running benchmark: its processes and results.
type lab struct {
	cfg  benchConfig
	out  io.Writer
	dir  string
	logs string
	self string

	procs []*proc

	dcAddr, obfsAddr, coverAddr string
	coverCert, coverKey         string
	tunnelCert, tunnelKey, pin  string
	relay                       *proc
	relayAddr                   string
	link                        *link.Link
	secret                      mtproxy.Secret
	hello                       []byte
	// The idle test's relays: TLS carrier and MTProxy mode, and QUIC.
	idleDir, idleAddr, idleLink             string
	idleSecret                              mtproxy.Secret
	idleQUICDir, idleQUICAddr, idleQUICLink string

	nofile uint64 // RLIMIT_NOFILE, raised

	paths  map[string]*path
	res    results
	rounds int // rounds completed
}

func (l *lab) wants(path string) bool { return slices.Contains(l.cfg.only, path) }

func (l *lab) wantsTest(t string) bool { return slices.Contains(l.cfg.tests, t) }

func (l *lab) logf(format string, args ...any) {
	fmt.Fprintf(l.out, "# "+format+"\n", args...)
}

// close stops every process and removes the work directory unless it was
// given, --keep is set, or keep.
func (l *lab) close(keep bool) {
	var wg sync.WaitGroup
	for _, p := range l.procs {
		wg.Go(p.stop)
	}
	wg.Wait()
	if l.dir != "" && !keep && !l.cfg.keep && l.cfg.workdir == "" {
		os.RemoveAll(l.dir)
	} else if l.dir != "" {
		l.logf("work directory and logs kept in %s", l.dir)
	}
}

// startRole starts a benchnet role and waits for its address.
func (l *lab) startRole(name string, args ...string) (*proc, string, error) {
	p, err := startProc(name, l.logs, l.self, args...)
	if err != nil {
		return nil, "", err
	}
	l.procs = append(l.procs, p)
	addr, err := p.addr()
	return p, addr, err
}

func (l *lab) setup(ctx context.Context) error {
	var err error
	if l.self, err = os.Executable(); err != nil {
		return err
	}
	for _, b := range []string{"merpati", "merpati-relay"} {
		if _, err := os.Stat(filepath.Join(l.cfg.bin, b)); err != nil {
			return fmt.Errorf("run: --bin: %w", err)
		}
	}
	if l.nofile, err = raiseNoFile(); err != nil {
		return fmt.Errorf("raise RLIMIT_NOFILE: %w", err)
	} else if need := uint64(slices.Max(l.cfg.sessions)) + 1000; (l.wantsTest("idle") || l.wantsTest("idle-stream")) && l.nofile < need {
		return fmt.Errorf("RLIMIT_NOFILE is %d, test idle needs about %d: raise it (ulimit -n) or lower --sessions", l.nofile, need)
	}
	if l.cfg.workdir != "" {
		l.dir = l.cfg.workdir
		err = os.MkdirAll(l.dir, 0o700)
	} else {
		l.dir, err = os.MkdirTemp("", "benchnet.")
	}
	if err != nil {
		return err
	}
	l.logs = filepath.Join(l.dir, "logs")
	if err := os.MkdirAll(l.logs, 0o700); err != nil {
		return err
	}
	l.coverCert, l.coverKey = filepath.Join(l.dir, "cover.pem"), filepath.Join(l.dir, "cover-key.pem")
	l.tunnelCert, l.tunnelKey = filepath.Join(l.dir, "tunnel.pem"), filepath.Join(l.dir, "tunnel-key.pem")
	if err := writeCert(l.coverCert, l.coverKey, coverName); err != nil {
		return err
	}
	if err := writeCert(l.tunnelCert, l.tunnelKey, tunnelName); err != nil {
		return err
	}
	if l.pin, err = spkiPin(l.tunnelCert); err != nil {
		return err
	}
	bufArg := "--buf=" + strconv.Itoa(l.cfg.buf)

	if _, l.dcAddr, err = l.startRole("dc", "dc", bufArg); err != nil {
		return err
	}
	if _, l.obfsAddr, err = l.startRole("dc-obfs", "dc", "--obfs", bufArg); err != nil {
		return err
	}
	if _, l.coverAddr, err = l.startRole("cover", "cover", "--cert", l.coverCert, "--key", l.coverKey); err != nil {
		return err
	}
	l.paths = map[string]*path{}
	needRelay := l.wants("tls") || l.wants("quic") || l.wants("mtproxy")
	if needRelay {
		if err := l.startRelay(); err != nil {
			return err
		}
	}
	idle := l.wantsTest("idle") || l.wantsTest("idle-stream")
	if idle && (l.wants("tls") || l.wants("mtproxy")) {
		var lk *link.Link
		if l.idleDir, l.idleAddr, lk, l.idleSecret, err = l.initRelay("relay-idle", false); err != nil {
			return err
		}
		l.idleLink = lk.String()
	}
	if idle && l.wants("quic") {
		var lk *link.Link
		if l.idleQUICDir, l.idleQUICAddr, lk, _, err = l.initRelay("relay-idle-quic", true); err != nil {
			return err
		}
		l.idleQUICLink = lk.String()
	}
	for _, carrier := range []string{"tls", "quic"} {
		if !l.wants(carrier) {
			continue
		}
		lk := *l.link
		lk.Carriers = []string{carrier}
		p, err := startProc("merpati-"+carrier, l.logs, filepath.Join(l.cfg.bin, "merpati"), "run",
			"--link", lk.String(), "--listen", "127.0.0.1:0", "--config-dir", filepath.Join(l.dir, "client-"+carrier),
			"--log-level", "warn")
		if err != nil {
			return err
		}
		l.procs = append(l.procs, p)
		m, _, err := p.waitFor(regexp.MustCompile(`SOCKS5 proxy for Telegram on (\S+:\d+)\.`), 0, 30*time.Second)
		if err != nil {
			return err
		}
		l.paths[carrier] = &path{name: carrier, client: p, server: l.relay, open: l.socksOpener(m[1]), hsAddr: l.relayAddr}
	}
	if l.wants("plain-tls") {
		srv, saddr, err := l.startRole("tls-server", "tls-server", "--cert", l.tunnelCert, "--key", l.tunnelKey, bufArg)
		if err != nil {
			return err
		}
		cli, caddr, err := l.startRole("tls-client", "tls-client", "--server", saddr, "--pin", l.pin, bufArg)
		if err != nil {
			return err
		}
		l.paths["plain-tls"] = &path{name: "plain-tls", client: cli, server: srv, open: l.socksOpener(caddr), hsAddr: saddr}
	}
	if l.wants("plain-quic") {
		srv, saddr, err := l.startRole("quic-server", "quic-server", "--cert", l.tunnelCert, "--key", l.tunnelKey, bufArg)
		if err != nil {
			return err
		}
		cli, caddr, err := l.startRole("quic-client", "quic-client", "--server", saddr, "--pin", l.pin, bufArg)
		if err != nil {
			return err
		}
		l.paths["plain-quic"] = &path{name: "plain-quic", client: cli, server: srv, open: l.socksOpener(caddr), hsAddr: saddr}
	}
	if l.wants("mtproxy") {
		if l.hello, err = helloRecord(l.secret.Host); err != nil {
			return err
		}
		relay := l.relayAddr
		l.paths["mtproxy"] = &path{name: "mtproxy", server: l.relay, open: func() (stream, error) {
			c, err := dialSpread(relay)
			if err != nil {
				return nil, err
			}
			c.SetDeadline(time.Now().Add(30 * time.Second))
			o, err := mtproxytest.ClientHandshake(c, l.secret, l.hello, time.Now(), mtproxy.PaddedIntermediate, dcObfs)
			if err != nil {
				c.Close()
				return nil, fmt.Errorf("mtproxy handshake: %w", err)
			}
			c.SetDeadline(time.Time{})
			return o, nil
		}}
	}
	if l.wants("splice") {
		srv, saddr, err := l.startRole("splice", "splice", "--to", l.obfsAddr, bufArg)
		if err != nil {
			return err
		}
		l.paths["splice"] = &path{name: "splice", server: srv, open: func() (stream, error) {
			c, err := dialSpread(saddr)
			if err != nil {
				return nil, err
			}
			o, err := mtproxy.StartDC(c, mtproxy.PaddedIntermediate, dcObfs)
			if err != nil {
				c.Close()
				return nil, err
			}
			return o, nil
		}}
	}
	// Every path must carry an echo before anything is measured; the
	// QUIC carrier may need a moment after the relay's start.
	for _, name := range l.cfg.only {
		if err := l.warm(ctx, l.paths[name]); err != nil {
			return err
		}
	}
	l.logf("%d CPUs; every hop a process on loopback; buffers %s; work directory %s", runtime.NumCPU(), formatSize(int64(l.cfg.buf)), l.dir)
	return nil
}

// initRelay makes a relay directory name listening on a free loopback
// port, with a key "bench" whose limits the benchmark does not reach, and
// returns its directory, address, link and MTProxy secret.
func (l *lab) initRelay(name string, quic bool) (dir, addr string, lk *link.Link, secret mtproxy.Secret, err error) {
	ln, pc, err := listenBoth("127.0.0.1:0")
	if err != nil {
		return "", "", nil, secret, err
	}
	addr = ln.Addr().String()
	ln.Close()
	pc.Close()
	dir = filepath.Join(l.dir, name)
	relayBin := filepath.Join(l.cfg.bin, "merpati-relay")
	quicMode := "off"
	if quic {
		quicMode = "on"
	}
	out, err := exec.Command(relayBin, "init", "--dir", dir, "--public", addr, "--listen", addr,
		"--cover", "https://"+l.coverAddr+"/", "--sni", coverName, "--offline", "--quic", quicMode,
		"--dc", fmt.Sprintf("%d=%s", dcPlain, l.dcAddr), "--dc", fmt.Sprintf("%d=%s", dcObfs, l.obfsAddr)).CombinedOutput()
	if err != nil {
		return "", "", nil, secret, fmt.Errorf("merpati-relay init: %w\n%s", err, out)
	}
	out, err = exec.Command(relayBin, "link", "add", "bench", "--dir", dir,
		"--max-sessions", "1000000", "--max-streams", "1000000").CombinedOutput()
	if err != nil {
		return "", "", nil, secret, fmt.Errorf("merpati-relay link add: %w\n%s", err, out)
	}
	text := regexp.MustCompile(`merpati://\S+`).Find(out)
	if text == nil {
		return "", "", nil, secret, fmt.Errorf("merpati-relay link add printed no merpati:// link:\n%s", out)
	}
	if lk, err = link.Parse(string(text)); err != nil {
		return "", "", nil, secret, err
	}
	if tg := regexp.MustCompile(`tg://proxy\?\S+`).Find(out); tg != nil {
		u, err := url.Parse(string(tg))
		if err != nil {
			return "", "", nil, secret, err
		}
		if secret, err = mtproxy.ParseSecret(u.Query().Get("secret")); err != nil {
			return "", "", nil, secret, fmt.Errorf("tg:// link secret: %w", err)
		}
	}
	return dir, addr, lk, secret, nil
}

func (l *lab) startRelay() error {
	var err error
	var dir string
	if dir, l.relayAddr, l.link, l.secret, err = l.initRelay("relay", l.wants("quic")); err != nil {
		return err
	}
	if l.relay, err = l.runRelay("relay", dir); err != nil {
		return err
	}
	if l.wants("quic") {
		if _, _, err := l.relay.waitFor(regexp.MustCompile(`relay listening.*transport=quic`), 0, 30*time.Second); err != nil {
			return err
		}
	}
	return nil
}

// runRelay starts merpati-relay run on dir and waits until it listens.
func (l *lab) runRelay(name, dir string) (*proc, error) {
	p, err := startProc(name, l.logs, filepath.Join(l.cfg.bin, "merpati-relay"), "run", "--dir", dir, "--log-level", "info")
	if err != nil {
		return nil, err
	}
	l.procs = append(l.procs, p)
	if _, _, err := p.waitFor(regexp.MustCompile(`relay listening`), 0, 30*time.Second); err != nil {
		return nil, err
	}
	return p, nil
}

// drop stops p and forgets it.
func (l *lab) drop(p *proc) {
	p.stop()
	l.procs = slices.DeleteFunc(l.procs, func(q *proc) bool { return q == p })
}

// socksOpener opens streams through the SOCKS5 proxy at proxy to the DC.
func (l *lab) socksOpener(proxy string) func() (stream, error) {
	return func() (stream, error) { return socksDial(proxy, l.dcAddr) }
}

// spreadNets is how many source networks dialSpread takes turns with.
const spreadNets = 250

var spreadNext atomic.Uint32

// dialSpread dials addr from loopback source addresses in spreadNets
// different /24 networks in turn (127.1.N.1): the relay checks at most 50
// MTProxy hellos a second from one network (tlscarrier's MTProxyChecks, an
// anti-probing limit) and sends the rest to its cover site, which the
// stream-open and many-stream tests would exceed from one address. The
// splice path dials the same way.
func dialSpread(addr string) (net.Conn, error) {
	n := spreadNext.Add(1) % spreadNets
	d := net.Dialer{Timeout: 10 * time.Second, LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 1, byte(n), 1)}}
	return d.Dial("tcp", addr)
}

// helloRecord returns the ClientHello record crypto/tls sends for
// serverName, to be signed as an MTProxy app's FakeTLS hello.
func helloRecord(serverName string) ([]byte, error) {
	c, s := net.Pipe()
	defer s.Close()
	go func() {
		tls.Client(c, &tls.Config{ServerName: serverName, InsecureSkipVerify: true}).Handshake()
		c.Close()
	}()
	rec, err := hello.ReadRecord(s)
	if err != nil {
		return nil, fmt.Errorf("read crypto/tls ClientHello: %w", err)
	}
	return rec, nil
}

// warm opens a stream along p and echoes a packet, retrying for up to
// 30 seconds.
func (l *lab) warm(ctx context.Context, p *path) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := echoOnce(p)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("path %s does not carry an echo: %w (logs in %s)", p.name, err, l.logs)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// echoOnce opens a stream along p and echoes one packet.
func echoOnce(p *path) error {
	s, err := p.open()
	if err != nil {
		return err
	}
	defer s.Close()
	return echo(s, packet(openEchoLen))
}

// errStop means the benchmark was interrupted.
var errStop = errors.New("stopped")

// measure runs every test on every path, --count rounds. A test that
// fails is reported and left out of the table; the others go on. It
// returns the failures, or errStop when ctx ends.
func (l *lab) measure(ctx context.Context) error {
	var failed []error
	for round := 1; round <= l.cfg.count; round++ {
		l.logf("round %d of %d", round, l.cfg.count)
		for _, test := range l.cfg.tests {
			for _, name := range l.cfg.only {
				if ctx.Err() != nil {
					return errStop
				}
				p := l.paths[name]
				var err error
				switch test {
				case "1":
					err = l.testSingle(p)
				case "100":
					err = l.testMany(p)
				case "open":
					err = l.testOpen(p)
				case "rtt":
					err = l.testRTT(p)
				case "rtt-load":
					err = l.testRTTLoad(p)
				case "hs":
					if slices.Contains(hsPaths, name) {
						err = l.testHandshake(p)
					}
				case "idle":
					if slices.Contains(idlePaths, name) {
						err = l.testIdle(ctx, p, false)
					}
				case "idle-stream":
					if slices.Contains(streamIdlePaths, name) {
						err = l.testIdle(ctx, p, true)
					}
				}
				if errors.Is(err, errStop) {
					return err
				}
				if err != nil {
					err = fmt.Errorf("round %d, test %s, path %s: %w", round, test, name, err)
					l.logf("FAILED %v", err)
					failed = append(failed, err)
				}
			}
		}
		l.rounds = round
	}
	if len(failed) > 0 {
		return fmt.Errorf("%d measurement(s) failed (logs in %s): %w", len(failed), l.logs, errors.Join(failed...))
	}
	return nil
}

func (l *lab) record(path, metric string, v float64) {
	l.res.add(path, metric, v)
	if l.cfg.verbose {
		l.logf("%-10s %-14s %10.3f", path, metric, v)
	}
}

// transfer sends or receives n bytes on s as mode says, through the DC.
func transfer(s stream, mode byte, n int64, buf []byte) error {
	if _, err := s.Write(header(mode, n)); err != nil {
		return err
	}
	switch mode {
	case modeDown:
		for got := int64(0); got < n; {
			m, err := s.Read(buf)
			got += int64(m)
			if err != nil {
				if errors.Is(err, io.EOF) && got >= n {
					break
				}
				return fmt.Errorf("download: %d of %d bytes: %w", got, n, err)
			}
		}
	case modeUp:
		for left := n; left > 0; {
			m := min(int64(len(buf)), left)
			if _, err := s.Write(buf[:m]); err != nil {
				return fmt.Errorf("upload: %w", err)
			}
			left -= m
		}
		ack := make([]byte, ackLen)
		if _, err := io.ReadFull(s, ack); err != nil {
			return fmt.Errorf("upload: acknowledgement: %w", err)
		}
	}
	return nil
}

const gib = 1 << 30

// testSingle measures one stream down then up.
func (l *lab) testSingle(p *path) error {
	var dc, dr, sc, sr float64
	for _, mode := range []byte{modeDown, modeUp} {
		s, err := p.open()
		if err != nil {
			return err
		}
		buf := packet(l.cfg.buf)
		c0, s0 := cpuOf(p.client, p.server), syscallsOf(p.client, p.server)
		t0 := time.Now()
		err = transfer(s, mode, l.cfg.size, buf)
		el := time.Since(t0).Seconds()
		c1, s1 := cpuOf(p.client, p.server), syscallsOf(p.client, p.server)
		s.Close()
		if err != nil {
			return err
		}
		dc += c1[0] - c0[0]
		dr += c1[1] - c0[1]
		sc += s1[0] - s0[0]
		sr += s1[1] - s0[1]
		l.record(p.name, "1-"+string(mode), float64(l.cfg.size)/1e6/el)
	}
	gibs := float64(2*l.cfg.size) / gib
	mibs := gibs * 1024
	if p.client != nil {
		l.record(p.name, "cpu1-client", dc/gibs)
		l.record(p.name, "sys1-client", sc/mibs)
	}
	l.record(p.name, "cpu1-relay", dr/gibs)
	l.record(p.name, "sys1-relay", sr/mibs)
	return nil
}

// openMany opens n streams along p, a few at a time.
func openMany(p *path, n int) ([]stream, error) {
	out := make([]stream, n)
	var next atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	for range min(openConcurrencyApp, n) {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n || firstErr.Load() != nil {
					return
				}
				s, err := p.open()
				if err != nil {
					firstErr.CompareAndSwap(nil, err)
					return
				}
				out[i] = s
			}
		})
	}
	wg.Wait()
	if err, _ := firstErr.Load().(error); err != nil {
		for _, s := range out {
			if s != nil {
				s.Close()
			}
		}
		return nil, err
	}
	return out, nil
}

// testMany measures --streams concurrent streams down then up.
func (l *lab) testMany(p *path) error {
	var dc, dr, sc, sr float64
	for _, mode := range []byte{modeDown, modeUp} {
		ss, err := openMany(p, l.cfg.streams)
		if err != nil {
			return err
		}
		startc := make(chan struct{})
		errs := make(chan error, len(ss))
		var wg sync.WaitGroup
		for _, s := range ss {
			wg.Go(func() {
				buf := packet(l.cfg.buf)
				<-startc
				errs <- transfer(s, mode, l.cfg.psize, buf)
			})
		}
		time.Sleep(50 * time.Millisecond) // every goroutine at the start line
		c0, s0 := cpuOf(p.client, p.server), syscallsOf(p.client, p.server)
		t0 := time.Now()
		close(startc)
		wg.Wait()
		el := time.Since(t0).Seconds()
		c1, s1 := cpuOf(p.client, p.server), syscallsOf(p.client, p.server)
		for _, s := range ss {
			s.Close()
		}
		close(errs)
		for err := range errs {
			if err != nil {
				return err
			}
		}
		dc += c1[0] - c0[0]
		dr += c1[1] - c0[1]
		sc += s1[0] - s0[0]
		sr += s1[1] - s0[1]
		l.record(p.name, "100-"+string(mode), float64(l.cfg.psize)*float64(len(ss))/1e6/el)
	}
	gibs := float64(2*l.cfg.psize*int64(l.cfg.streams)) / gib
	mibs := gibs * 1024
	if p.client != nil {
		l.record(p.name, "cpu100-client", dc/gibs)
		l.record(p.name, "sys100-client", sc/mibs)
	}
	l.record(p.name, "cpu100-relay", dr/gibs)
	l.record(p.name, "sys100-relay", sr/mibs)
	return nil
}

// testOpen measures streams opened one after another, each echoing a
// packet.
func (l *lab) testOpen(p *path) error {
	if err := echoOnce(p); err != nil { // a QUIC carrier session may have idled out
		return err
	}
	t0 := time.Now()
	for range l.cfg.opens {
		if err := echoOnce(p); err != nil {
			return err
		}
	}
	l.record(p.name, "opens", float64(l.cfg.opens)/time.Since(t0).Seconds())
	return nil
}

// testRTT measures round trips of a packet on one stream.
func (l *lab) testRTT(p *path) error { return l.roundTrips(p, "rtt", l.cfg.rtts) }

// loadStreams is how many streams download while test rtt-load measures
// round trips on another, as an app loads media while its user chats.
const loadStreams = 16

// testRTTLoad measures round trips of a packet on one stream while
// loadStreams other streams along the same path download without end.
// Through a carrier they share the stream's connection, so its packets
// queue behind their data; through a tunnel of a connection per stream
// they share only the CPU.
func (l *lab) testRTTLoad(p *path) error {
	ss, err := openMany(p, loadStreams)
	if err != nil {
		return err
	}
	var wg sync.WaitGroup
	for _, s := range ss {
		wg.Go(func() {
			// Ends with an error once s is closed below.
			transfer(s, modeDown, math.MaxInt64, packet(l.cfg.buf))
		})
	}
	defer func() {
		for _, s := range ss {
			s.Close()
		}
		wg.Wait()
	}()
	time.Sleep(200 * time.Millisecond) // the downloads under way
	return l.roundTrips(p, "rttload", max(1, l.cfg.rtts/4))
}

// roundTrips measures n round trips of a packet on a new stream along p,
// and records their median and 99th percentile as metric-p50 and
// metric-p99, in µs.
func (l *lab) roundTrips(p *path, metric string, n int) error {
	s, err := p.open()
	if err != nil {
		return err
	}
	defer s.Close()
	if _, err := s.Write(header(modeEcho, 0)); err != nil {
		return err
	}
	msg := packet(rttLen)
	got := make([]byte, rttLen)
	rtts := make([]time.Duration, 0, n)
	for i := range n + 50 {
		t0 := time.Now()
		if _, err := s.Write(msg); err != nil {
			return err
		}
		if _, err := io.ReadFull(s, got); err != nil {
			return err
		}
		if i >= 50 { // the first few warm up
			rtts = append(rtts, time.Since(t0))
		}
	}
	slices.Sort(rtts)
	us := func(q float64) float64 {
		return float64(rtts[min(len(rtts)-1, int(q*float64(len(rtts))))].Nanoseconds()) / 1e3
	}
	l.record(p.name, metric+"-p50", us(0.50))
	l.record(p.name, metric+"-p99", us(0.99))
	return nil
}

var (
	openedRE   = regexp.MustCompile(`^(?:opened \d+ ([0-9.]+)|error (.*))$`)
	sessionsRE = regexp.MustCompile(`^sessions (\d+)(; .*)?$`)
)

// sessionsDriver starts the many-sessions driver for p against addr.
func (l *lab) sessionsDriver(kind, addr, linkText string, extra ...string) (*proc, error) {
	args := append([]string{"sessions", "--kind", kind, "--addr", addr, "--buf=" + strconv.Itoa(l.cfg.buf)}, extra...)
	switch {
	case kind == "mtproxy":
		args = append(args, "--secret", linkText)
	case kind == "splice":
	case linkText != "":
		args = append(args, "--link", linkText)
	default:
		args = append(args, "--pin", l.pin)
	}
	d, err := startInteractive("sessions-"+kind, l.logs, l.self, args...)
	if err != nil {
		return nil, err
	}
	l.procs = append(l.procs, d)
	return d, nil
}

// openSessions has driver d open n sessions and returns how long it took.
func openSessions(d *proc, n int) (float64, error) {
	m, err := d.send(fmt.Sprintf("open %d", n), openedRE, 10*time.Minute)
	if err != nil {
		return 0, err
	}
	if m[2] != "" {
		return 0, fmt.Errorf("sessions driver: %s", m[2])
	}
	return strconv.ParseFloat(m[1], 64)
}

// linkFor returns the link the sessions driver uses on path p ("" for the
// plain tunnels).
func (l *lab) linkFor(p string) string {
	if p == "tls" || p == "quic" {
		return l.link.String()
	}
	return ""
}

// testHandshake measures new sessions or connections: the rate at which
// the driver opens them, 8 at a time, and the CPU each costs.
func (l *lab) testHandshake(p *path) error {
	d, err := l.sessionsDriver(p.name, p.hsAddr, l.linkFor(p.name))
	if err != nil {
		return err
	}
	defer l.drop(d)
	n := l.cfg.handshakes
	c0 := cpuOf(d, p.server)
	el, err := openSessions(d, n)
	if err != nil {
		return err
	}
	// The server's last handshakes may finish just after the client's.
	time.Sleep(300 * time.Millisecond)
	c1 := cpuOf(d, p.server)
	l.record(p.name, "hs-rate", float64(n)/el)
	l.record(p.name, "hs-client-ms", (c1[0]-c0[0])/float64(n)*1e3)
	l.record(p.name, "hs-relay-ms", (c1[1]-c0[1])/float64(n)*1e3)
	return nil
}

// testIdle measures, for each --sessions count, the memory and CPU a
// fresh relay (or tls-server, quic-server, splice) spends on that many
// idle sessions (or connections). Each count gets a fresh server, so that
// its delta starts from the same baseline and no session outlives the
// relay's idle timeout (64 s without a stream) before it is counted.
// Carrier sessions and tunnel connections idle without a stream; an
// MTProxy (or splice) connection is itself the app's stream to its
// datacenter, and idles after echoing one --buf packet, as an app's
// connections idle between uses.
//
// With stream set (test idle-stream), each carrier session or tunnel
// connection first opens a stream to the DC, echoes one --buf packet on
// it, and keeps it open: an app's session between its messages.
func (l *lab) testIdle(ctx context.Context, p *path, stream bool) error {
	for _, n := range l.cfg.sessions {
		two := slices.Contains(twoConnPaths, p.name) || stream && (p.name == "tls" || p.name == "plain-tls")
		if two && uint64(2*n+1000) > l.nofile {
			l.logf("%s: no idle test at %d sessions: the relay side needs two descriptors a session, RLIMIT_NOFILE is %d", p.name, n, l.nofile)
			continue
		}
		var srv *proc
		var addr, linkText string
		var err error
		bufArg := "--buf=" + strconv.Itoa(l.cfg.buf)
		switch p.name {
		case "tls", "mtproxy":
			srv, err = l.runRelay("relay-idle", l.idleDir)
			addr, linkText = l.idleAddr, l.idleLink
			if p.name == "mtproxy" {
				linkText = l.idleSecret.String()
			}
		case "quic":
			if srv, err = l.runRelay("relay-idle-quic", l.idleQUICDir); err == nil {
				_, _, err = srv.waitFor(regexp.MustCompile(`relay listening.*transport=quic`), 0, 30*time.Second)
			}
			addr, linkText = l.idleQUICAddr, l.idleQUICLink
		case "plain-tls":
			srv, addr, err = l.startRole("tls-server-idle", "tls-server", "--cert", l.tunnelCert, "--key", l.tunnelKey, bufArg)
		case "plain-quic":
			srv, addr, err = l.startRole("quic-server-idle", "quic-server", "--cert", l.tunnelCert, "--key", l.tunnelKey, bufArg)
		case "splice":
			srv, addr, err = l.startRole("splice-idle", "splice", "--to", l.obfsAddr, bufArg)
		default:
			return fmt.Errorf("no idle test for path %s", p.name)
		}
		if err != nil {
			if srv != nil {
				l.drop(srv)
			}
			return err
		}
		err = l.idleOnce(ctx, p.name, srv, addr, linkText, n, stream)
		l.drop(srv)
		if err != nil {
			return err
		}
	}
	return nil
}

func (l *lab) idleOnce(ctx context.Context, kind string, srv *proc, addr, linkText string, n int, stream bool) error {
	sleep := func(d time.Duration) error {
		select {
		case <-ctx.Done():
			return errStop
		case <-time.After(d):
			return nil
		}
	}
	if err := sleep(settle); err != nil {
		return err
	}
	rss0, err := rssKB(srv.pid())
	if err != nil {
		return err
	}
	var extra []string
	if stream {
		extra = []string{"--stream", "--dc", l.dcAddr}
	}
	d, err := l.sessionsDriver(kind, addr, linkText, extra...)
	if err != nil {
		return err
	}
	defer l.drop(d)
	if _, err := openSessions(d, n); err != nil {
		return err
	}
	if err := sleep(settle); err != nil {
		return err
	}
	rss1, err := rssKB(srv.pid())
	if err != nil {
		return err
	}
	c0 := cpuOf(srv)
	if err := sleep(l.cfg.idleWindow); err != nil {
		return err
	}
	c1 := cpuOf(srv)
	m, err := d.send("count", sessionsRE, time.Minute)
	if err != nil {
		return err
	}
	if live, _ := strconv.Atoi(m[1]); live != n {
		// QUIC sessions without a stream end at the idle timeout (30 s)
		// by design, as Chromium's idle connections do: the client
		// pings only while streams are open.
		why := ""
		if m[2] != "" {
			why = " (most ended with " + strings.TrimPrefix(m[2], "; ") + ")"
		}
		l.logf("warning: %s: only %d of %d idle sessions still alive after the measurement%s", kind, live, n, why)
	}
	suffix := "@" + strconv.Itoa(n)
	prefix := "idle"
	if stream {
		prefix = "idlest"
	}
	l.record(kind, prefix+"-kb"+suffix, float64(rss1-rss0)/float64(n))
	l.record(kind, prefix+"-cpu"+suffix, (c1[0]-c0[0])/l.cfg.idleWindow.Seconds()*100)
	return nil
}
