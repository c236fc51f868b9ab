package censorlab

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// A Host is one machine of the lab, a network namespace.
type Host string

// The lab's hosts.
const (
	Client Host = "client" // where the user, merpati and the Telegram app run
	Censor Host = "censor" // the router between the client and everything else
	Relay  Host = "relay"  // the merpati relay, on two addresses (relay1, relay2)
	DC     Host = "dc"     // the "Telegram" datacenter (a gotd tgtest DC)
)

// Hosts lists every host, in the order they are made.
var Hosts = []Host{Client, Censor, Relay, DC}

// Lab addresses. They exist only inside the lab's namespaces.
const (
	// LabPrefix covers every lab address; nothing routes outside it.
	LabPrefix = "10.201.0.0/16"
	// ClientAddr is the client host's address.
	ClientAddr = "10.201.1.2"
	// Relay1Addr and Relay2Addr are the relay host's two addresses,
	// standing for two relays named in one share link.
	Relay1Addr = "10.201.2.2"
	Relay2Addr = "10.201.2.3"
	// RelayPort is the port the relay listens on, for both carriers.
	RelayPort = 443
	// DCAddr is the "Telegram" DC's address, inside DCPrefix.
	DCAddr = "10.201.100.2"
	// DCPrefix plays Telegram's address ranges: the censor's DropTo target
	// and the relay's --allow range.
	DCPrefix = "10.201.100.0/24"
	// DCPort is the port the DC listens on.
	DCPort = 443
	// DCID is the datacenter number the DC plays.
	DCID = 2
	// CoverAddr is where the relay's cover web site listens, on the relay
	// host's loopback.
	CoverAddr = "127.0.0.1:8443"
	// CoverName is the cover site's server name, sent as SNI.
	CoverName = "cover.merpati.test"
)

// censorIfaces are the censor's interfaces: towards the client, the relay
// and the DC.
var censorIfaces = []string{"client0", "relay0", "dc0"}

// ErrNotRoot is returned by [Check] when the process is not root.
var ErrNotRoot = errors.New("censorlab: needs root")

// Check reports whether this machine can run a lab: root, and the ip, tc,
// ss and nft commands. The error names what is missing.
func Check() error {
	if os.Geteuid() != 0 {
		return ErrNotRoot
	}
	var missing []string
	for _, tool := range []string{"ip", "tc", "ss", "nft"} {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("censorlab: missing tools: %s (apt-get install iproute2 nftables)", strings.Join(missing, ", "))
	}
	return nil
}

// DefaultPrefix starts the namespace names of labs whose Config has none.
const DefaultPrefix = "mpl"

// Config configures a lab.
type Config struct {
	// Prefix starts the lab's namespace names; empty means DefaultPrefix.
	// It must be short, lower-case letters and digits.
	Prefix string
	// Dir receives the processes' logs and files; empty means a new
	// temporary directory, removed by Close.
	Dir string
	// Bins are the programs run inside the lab (see [Build]). Only
	// [Lab.StartServices], [Lab.StartClient] and [Lab.Telegram] need them.
	Bins Bins
	// Logger receives what the lab does; nil discards.
	Logger *slog.Logger
}

// A Lab is a running set of namespaces. Its methods are safe for
// concurrent use.
type Lab struct {
	// ID is the part of the namespace names shared by the lab's hosts:
	// "PREFIX-PID-RAND".
	ID string
	// Dir holds the lab's logs and files.
	Dir string

	cfg    Config
	log    *slog.Logger
	ownDir bool

	mu     sync.Mutex
	procs  []*Proc
	nsMade []Host
	delay  *Proc // labnode delay, the user-space netem, if running
	closed bool
}

// NS returns the name of host's network namespace.
func (l *Lab) NS(h Host) string { return l.ID + "-" + string(h) }

// New makes a lab: the namespaces, links, addresses and routes, with the
// censor forwarding everything. It first deletes leftovers of labs with the
// same prefix whose process has exited. On error nothing is left behind.
func New(ctx context.Context, cfg Config) (*Lab, error) {
	if err := Check(); err != nil {
		return nil, err
	}
	if cfg.Prefix == "" {
		cfg.Prefix = DefaultPrefix
	}
	for _, r := range cfg.Prefix {
		if !('a' <= r && r <= 'z' || '0' <= r && r <= '9') || len(cfg.Prefix) > 16 {
			return nil, fmt.Errorf("censorlab: Config.Prefix %q: want up to 16 lower-case letters and digits", cfg.Prefix)
		}
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if n, err := CleanupStale(ctx, cfg.Prefix); err != nil {
		log.Warn("stale labs not cleaned up", "err", err)
	} else if n > 0 {
		log.Info("deleted stale lab namespaces", "count", n)
	}
	var rnd [3]byte
	rand.Read(rnd[:])
	l := &Lab{
		ID:  fmt.Sprintf("%s-%d-%s", cfg.Prefix, os.Getpid(), hex.EncodeToString(rnd[:])),
		cfg: cfg,
		log: log,
		Dir: cfg.Dir,
	}
	if l.Dir == "" {
		d, err := os.MkdirTemp("", "censorlab-")
		if err != nil {
			return nil, fmt.Errorf("censorlab: %w", err)
		}
		l.Dir, l.ownDir = d, true
	}
	if err := l.build(ctx); err != nil {
		l.Close()
		return nil, err
	}
	log.Info("lab up", "id", l.ID, "dir", l.Dir)
	return l, nil
}

// build makes the topology drawn in the package doc.
func (l *Lab) build(ctx context.Context) error {
	for _, h := range Hosts {
		if err := l.ip(ctx, "netns", "add", l.NS(h)); err != nil {
			return err
		}
		l.mu.Lock()
		l.nsMade = append(l.nsMade, h)
		l.mu.Unlock()
		if err := l.ip(ctx, "-n", l.NS(h), "link", "set", "lo", "up"); err != nil {
			return err
		}
	}
	type end struct {
		host  Host
		iface string
		addrs []string
	}
	links := [][2]end{
		{{Client, "censor0", []string{ClientAddr + "/24"}}, {Censor, "client0", []string{"10.201.1.1/24"}}},
		{{Censor, "relay0", []string{"10.201.2.1/24"}}, {Relay, "censor0", []string{Relay1Addr + "/24", Relay2Addr + "/24"}}},
		{{Censor, "dc0", []string{"10.201.3.1/24"}}, {DC, "censor0", []string{"10.201.3.2/24"}}},
		{{Relay, "dc0", []string{"10.201.4.1/24"}}, {DC, "relay0", []string{"10.201.4.2/24"}}},
	}
	for _, lk := range links {
		a, b := lk[0], lk[1]
		// Both ends are created directly inside their namespaces, so no
		// interface ever appears in the host's namespace.
		if err := l.ip(ctx, "link", "add", a.iface, "netns", l.NS(a.host), "type", "veth",
			"peer", "name", b.iface, "netns", l.NS(b.host)); err != nil {
			return err
		}
		for _, e := range []end{a, b} {
			for _, addr := range e.addrs {
				if err := l.ip(ctx, "-n", l.NS(e.host), "addr", "add", addr, "dev", e.iface); err != nil {
					return err
				}
			}
			if err := l.ip(ctx, "-n", l.NS(e.host), "link", "set", e.iface, "up"); err != nil {
				return err
			}
		}
	}
	// The DC's service address sits on its loopback, reachable over both
	// of its links.
	if err := l.ip(ctx, "-n", l.NS(DC), "addr", "add", DCAddr+"/32", "dev", "lo"); err != nil {
		return err
	}
	routes := []struct {
		host     Host
		dst, via string
	}{
		{Client, LabPrefix, "10.201.1.1"},
		{Censor, DCPrefix, "10.201.3.2"},
		{Relay, "10.201.1.0/24", "10.201.2.1"},
		{Relay, DCPrefix, "10.201.4.2"},
		{DC, "10.201.1.0/24", "10.201.3.1"},
	}
	for _, r := range routes {
		if err := l.ip(ctx, "-n", l.NS(r.host), "route", "add", r.dst, "via", r.via); err != nil {
			return err
		}
	}
	if _, err := l.Run(ctx, Censor, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"); err != nil {
		return err
	}
	return l.initCensor(ctx)
}

// ip runs the ip command.
func (l *Lab) ip(ctx context.Context, args ...string) error {
	out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("censorlab: ip %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// Command returns a command that runs name with args inside host's
// namespace.
func (l *Lab) Command(ctx context.Context, h Host, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", l.NS(h), name}, args...)...)
}

// Run runs name with args inside host's namespace and returns its combined
// output; the error includes the output.
func (l *Lab) Run(ctx context.Context, h Host, name string, args ...string) ([]byte, error) {
	out, err := l.Command(ctx, h, name, args...).CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("censorlab: %s: %s %s: %w: %s", h, name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return out, nil
}

// A Proc is a long-running process inside the lab, started by [Lab.Start].
type Proc struct {
	// Name names the process in logs; its output goes to Name+".log" in
	// the lab's Dir.
	Name string
	// LogPath is the file receiving its stdout and stderr.
	LogPath string

	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

// Start starts name with args inside host's namespace. Its stdout and
// stderr go to the file [Proc.LogPath]. The lab stops it on Close.
func (l *Lab) Start(h Host, procName, name string, args ...string) (*Proc, error) {
	path := filepath.Join(l.Dir, procName+".log")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("censorlab: %w", err)
	}
	defer f.Close()
	// "ip netns exec" execs name in place, so the process is name itself
	// and a signal to it reaches the program.
	cmd := exec.Command("ip", append([]string{"netns", "exec", l.NS(h), name}, args...)...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil, errors.New("censorlab: lab closed")
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("censorlab: start %s: %w", procName, err)
	}
	p := &Proc{Name: procName, LogPath: path, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	l.procs = append(l.procs, p)
	l.log.Debug("started", "proc", procName, "host", string(h), "pid", cmd.Process.Pid)
	return p, nil
}

// Done is closed when the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Err returns how the process exited, once Done is closed.
func (p *Proc) Err() error { return p.err }

// Output returns what the process has written so far.
func (p *Proc) Output() string {
	b, _ := os.ReadFile(p.LogPath)
	return string(b)
}

// Stop sends SIGTERM, waits up to 3 seconds, then kills. It returns once
// the process has exited.
func (p *Proc) Stop() {
	select {
	case <-p.done:
		return
	default:
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(3 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
}

// Logs returns the output of every process started so far, labelled, for
// a failing test to print.
func (l *Lab) Logs() string {
	l.mu.Lock()
	procs := append([]*Proc(nil), l.procs...)
	l.mu.Unlock()
	var b strings.Builder
	for _, p := range procs {
		fmt.Fprintf(&b, "==== %s (%s)\n%s\n", p.Name, p.LogPath, p.Output())
	}
	return b.String()
}

// Close stops every process and deletes the lab's namespaces (and with
// them every interface, address, rule and qdisc). It is idempotent and
// safe to call after a failed New.
func (l *Lab) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	procs := l.procs
	made := l.nsMade
	l.mu.Unlock()

	var wg sync.WaitGroup
	for _, p := range procs {
		wg.Add(1)
		go func() { defer wg.Done(); p.Stop() }()
	}
	wg.Wait()
	var errs []error
	for _, h := range made {
		if err := deleteNS(context.Background(), l.NS(h)); err != nil {
			errs = append(errs, err)
		}
	}
	if l.ownDir {
		os.RemoveAll(l.Dir)
	}
	l.log.Info("lab down", "id", l.ID)
	return errors.Join(errs...)
}

// deleteNS kills whatever still runs in namespace ns, then deletes it.
func deleteNS(ctx context.Context, ns string) error {
	if out, err := exec.CommandContext(ctx, "ip", "netns", "pids", ns).Output(); err == nil {
		for _, f := range strings.Fields(string(out)) {
			if pid, err := strconv.Atoi(f); err == nil && pid > 1 && pid != os.Getpid() {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
	out, err := exec.CommandContext(ctx, "ip", "netns", "del", ns).CombinedOutput()
	if err != nil {
		return fmt.Errorf("censorlab: ip netns del %s: %w: %s", ns, err, bytes.TrimSpace(out))
	}
	return nil
}

// CleanupStale deletes the namespaces of labs with prefix whose process
// (the PID in the name) no longer runs, and reports how many it deleted.
// Labs of running processes, this one's included, are left alone, so
// parallel runs do not disturb each other.
func CleanupStale(ctx context.Context, prefix string) (int, error) {
	out, err := exec.CommandContext(ctx, "ip", "netns", "list").Output()
	if err != nil {
		return 0, fmt.Errorf("censorlab: ip netns list: %w", err)
	}
	n := 0
	var errs []error
	for line := range strings.Lines(string(out)) {
		fields := strings.Fields(line)
		if len(fields) == 0 {
			continue
		}
		name := fields[0]
		parts := strings.Split(name, "-")
		if len(parts) != 4 || parts[0] != prefix {
			continue
		}
		pid, err := strconv.Atoi(parts[1])
		if err != nil || pid <= 0 {
			continue
		}
		if pid == os.Getpid() || alive(pid) {
			continue // its lab is alive
		}
		if err := deleteNS(ctx, name); err != nil {
			errs = append(errs, err)
			continue
		}
		n++
	}
	return n, errors.Join(errs...)
}

// alive reports whether process pid runs (and is not a zombie, which a
// killed lab process stays if nobody reaps it).
func alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return errors.Is(syscall.Kill(pid, 0), syscall.EPERM)
	}
	// The state follows the command name, which is in parentheses and
	// may itself contain ") ".
	if i := bytes.LastIndexByte(b, ')'); i >= 0 && i+2 < len(b) {
		return b[i+2] != 'Z' && b[i+2] != 'X'
	}
	return true
}
