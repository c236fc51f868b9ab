package censorlab

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/merpati/merpati/client/internal/telegramtest"
	"github.com/merpati/merpati/transport/link"
)

// Bins are the programs a lab runs, as paths.
type Bins struct {
	Merpati      string // client/cmd/merpati
	MerpatiRelay string // relay/cmd/merpati-relay
	LabNode      string // client/internal/censorlab/cmd/labnode
}

// Build builds the lab's programs with "go build" into dir, from the
// module that contains the current directory.
func Build(ctx context.Context, dir string) (Bins, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	gomod := strings.TrimSpace(string(out))
	if err != nil || gomod == "" || gomod == os.DevNull {
		return Bins{}, fmt.Errorf("censorlab: build: not inside the merpati module (go env GOMOD: %q, %v)", gomod, err)
	}
	cmd := exec.CommandContext(ctx, "go", "build", "-o", dir+string(filepath.Separator),
		"./client/cmd/merpati", "./relay/cmd/merpati-relay", "./client/internal/censorlab/cmd/labnode")
	cmd.Dir = filepath.Dir(gomod)
	if out, err := cmd.CombinedOutput(); err != nil {
		return Bins{}, fmt.Errorf("censorlab: go build: %w: %s", err, out)
	}
	return Bins{
		Merpati:      filepath.Join(dir, "merpati"),
		MerpatiRelay: filepath.Join(dir, "merpati-relay"),
		LabNode:      filepath.Join(dir, "labnode"),
	}, nil
}

func (b Bins) check() error {
	for _, p := range []string{b.Merpati, b.MerpatiRelay, b.LabNode} {
		if p == "" {
			return errors.New("censorlab: Config.Bins: not set (see Build)")
		}
		if _, err := os.Stat(p); err != nil {
			return fmt.Errorf("censorlab: Config.Bins: %w", err)
		}
	}
	return nil
}

// Services are the lab's servers, started by [Lab.StartServices].
type Services struct {
	// Link is the share link of the relay's first access key. It names
	// both relay addresses, Relay1Addr first.
	Link *link.Link
	// DCKeyFile holds the DC's public RSA key (PEM), which MTProto
	// clients need.
	DCKeyFile string
	// DC, Cover and Relay are the server processes.
	DC, Cover, Relay *Proc
}

// serviceTimeout bounds how long a server may take to start listening.
const serviceTimeout = 20 * time.Second

// StartServices starts the DC (a tgtest DC at DCAddr:DCPort in the DC
// host), the cover web site (CoverAddr in the relay host) and a merpati
// relay listening on port RelayPort of both relay addresses, made with
// "merpati-relay init" with --dc and --allow pointing it at the lab's DC.
func (l *Lab) StartServices(ctx context.Context) (*Services, error) {
	if err := l.cfg.Bins.check(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, serviceTimeout)
	defer cancel()
	s := &Services{DCKeyFile: filepath.Join(l.Dir, "dc-key.pem")}
	var err error
	s.DC, err = l.Start(DC, "dc", l.cfg.Bins.LabNode, "dc",
		"-id", strconv.Itoa(DCID), "-listen", net.JoinHostPort(DCAddr, strconv.Itoa(DCPort)), "-key-file", s.DCKeyFile)
	if err != nil {
		return nil, err
	}
	s.Cover, err = l.Start(Relay, "cover", l.cfg.Bins.LabNode, "cover", "-listen", CoverAddr, "-name", CoverName)
	if err != nil {
		return nil, err
	}

	// The relay checks at start that the cover site serves HTTP/3.
	if err := l.WaitListen(ctx, Relay, s.Cover, "tcp", 8443); err != nil {
		return nil, err
	}
	if err := l.WaitListen(ctx, Relay, s.Cover, "udp", 8443); err != nil {
		return nil, err
	}

	relayDir := filepath.Join(l.Dir, "relay")
	// init runs outside the lab's namespaces, where the cover site is not
	// to be reached: --offline (the relay run checks and learns it).
	out, err := exec.CommandContext(ctx, l.cfg.Bins.MerpatiRelay, "init", "--offline", "--dir", relayDir,
		"--public", net.JoinHostPort(Relay1Addr, strconv.Itoa(RelayPort)),
		"--public", net.JoinHostPort(Relay2Addr, strconv.Itoa(RelayPort)),
		"--listen", ":"+strconv.Itoa(RelayPort),
		"--cover", "https://"+CoverAddr, "--sni", CoverName,
		"--dc", fmt.Sprintf("%d=%s", DCID, net.JoinHostPort(DCAddr, strconv.Itoa(DCPort))),
		"--allow", DCPrefix).CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("censorlab: merpati-relay init: %w: %s", err, out)
	}
	for line := range strings.Lines(string(out)) {
		if line = strings.TrimSpace(line); strings.HasPrefix(line, link.Scheme+"://") {
			if s.Link, err = link.Parse(line); err != nil {
				return nil, fmt.Errorf("censorlab: merpati-relay init printed a bad link: %w", err)
			}
		}
	}
	if s.Link == nil {
		return nil, fmt.Errorf("censorlab: merpati-relay init printed no link: %s", out)
	}
	s.Relay, err = l.Start(Relay, "relay", l.cfg.Bins.MerpatiRelay, "run", "--dir", relayDir,
		"--log-level", "debug", "--log-format", "json")
	if err != nil {
		return nil, err
	}

	if err := l.WaitFile(ctx, s.DC, s.DCKeyFile); err != nil {
		return nil, err
	}
	if err := l.WaitListen(ctx, DC, s.DC, "tcp", DCPort); err != nil {
		return nil, err
	}
	if err := l.WaitListen(ctx, Relay, s.Relay, "tcp", RelayPort); err != nil {
		return nil, err
	}
	if slices.Contains(s.Link.CarrierList(), link.CarrierQUIC) {
		if err := l.WaitListen(ctx, Relay, s.Relay, "udp", RelayPort); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// ClientListen is the SOCKS5 address of merpati clients started by
// [Lab.StartClient], on the client host's loopback.
const ClientListen = "127.0.0.1:1080"

// StartClient runs "merpati run" with lk in the client host, its SOCKS5
// front at [ClientListen], logging JSON at debug level (see
// [ClientSessions]). name names its log; run at most one client at a time.
// extra are more "merpati run" flags, such as "--resolvers", "udp://"+DNSAddr+":53".
func (l *Lab) StartClient(ctx context.Context, name string, lk *link.Link, extra ...string) (*Proc, error) {
	if err := l.cfg.Bins.check(); err != nil {
		return nil, err
	}
	args := append([]string{"run", "--link", lk.String(), "--listen", ClientListen,
		"--config-dir", filepath.Join(l.Dir, name+"-config"), "--log-level", "debug", "--log-format", "json"}, extra...)
	p, err := l.Start(Client, name, l.cfg.Bins.Merpati, args...)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, serviceTimeout)
	defer cancel()
	_, port, _ := net.SplitHostPort(ClientListen)
	n, _ := strconv.Atoi(port)
	if err := l.WaitListen(ctx, Client, p, "tcp", n); err != nil {
		p.Stop()
		return nil, err
	}
	return p, nil
}

// DNSAddr is where [Lab.StartDNS] serves the bootstrap relay list, on
// port 53 of a third address of the relay host (behind the censor, like
// the relays, but a host of its own as far as the censor can tell).
const DNSAddr = "10.201.2.53"

// StartDNS runs "merpati-relay dns" in the relay host at DNSAddr:53 (UDP
// and TCP), serving the signed relay list files (see "merpati-relay list
// sign") under zone. Call it at most once per lab.
func (l *Lab) StartDNS(ctx context.Context, zone string, lists ...string) (*Proc, error) {
	if err := l.cfg.Bins.check(); err != nil {
		return nil, err
	}
	if len(lists) == 0 {
		return nil, errors.New("censorlab: StartDNS: no list file")
	}
	if err := l.ip(ctx, "-n", l.NS(Relay), "addr", "add", DNSAddr+"/24", "dev", "censor0"); err != nil {
		return nil, err
	}
	args := []string{"dns", "--zone", zone, "--listen", net.JoinHostPort(DNSAddr, "53"),
		"--log-level", "debug", "--log-format", "json"}
	for _, f := range lists {
		args = append(args, "--list", f)
	}
	p, err := l.Start(Relay, "dns", l.cfg.Bins.MerpatiRelay, args...)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, serviceTimeout)
	defer cancel()
	for _, network := range []string{"udp", "tcp"} {
		if err := l.WaitListen(ctx, Relay, p, network, 53); err != nil {
			p.Stop()
			return nil, err
		}
	}
	return p, nil
}

// WaitFile waits until path exists, failing early if p exits.
func (l *Lab) WaitFile(ctx context.Context, p *Proc, path string) error {
	return poll(ctx, p, "file "+path, func() bool {
		_, err := os.Stat(path)
		return err == nil
	})
}

// WaitListen waits until something listens on port (network "tcp" or
// "udp") in host, failing early if p exits.
func (l *Lab) WaitListen(ctx context.Context, h Host, p *Proc, network string, port int) error {
	flag := "-Hltn"
	if network == "udp" {
		flag = "-Hlun"
	}
	return poll(ctx, p, fmt.Sprintf("%s listening on %s port %d", p.Name, network, port), func() bool {
		out, err := l.Command(ctx, h, "ss", flag, "sport = :"+strconv.Itoa(port)).Output()
		return err == nil && len(bytes.TrimSpace(out)) > 0
	})
}

func poll(ctx context.Context, p *Proc, what string, ok func() bool) error {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for !ok() {
		select {
		case <-ctx.Done():
			return fmt.Errorf("censorlab: waiting for %s: %w\n%s", what, ctx.Err(), p.Output())
		case <-p.Done():
			return fmt.Errorf("censorlab: waiting for %s: %s exited: %v\n%s", what, p.Name, p.Err(), p.Output())
		case <-t.C:
		}
	}
	return nil
}

// TelegramOptions configure one [Lab.Telegram] run.
type TelegramOptions struct {
	// SOCKS is the merpati client's SOCKS5 address in the client host
	// (usually ClientListen); empty means connect to the DC directly.
	SOCKS string
	// RPCs is the number of echo RPCs after the key exchange; zero means
	// one.
	RPCs int
	// Timeout bounds the run; zero means 20 seconds.
	Timeout time.Duration
}

// Telegram runs a real gotd MTProto client in the client host against the
// lab's DC (labnode tg, see telegramtest.Run): through the merpati client
// at opts.SOCKS, or straight to DCAddr:DCPort. It returns the run's
// timings, or an error with the client's output.
func (l *Lab) Telegram(ctx context.Context, s *Services, opts TelegramOptions) (telegramtest.Stats, error) {
	if opts.RPCs <= 0 {
		opts.RPCs = 1
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 20 * time.Second
	}
	args := []string{"tg", "-id", strconv.Itoa(DCID), "-dc-key", s.DCKeyFile,
		"-target", net.JoinHostPort(DCAddr, strconv.Itoa(DCPort)),
		"-rpcs", strconv.Itoa(opts.RPCs), "-timeout", opts.Timeout.String()}
	if opts.SOCKS != "" {
		args = append(args, "-socks", opts.SOCKS)
	}
	ctx, cancel := context.WithTimeout(ctx, opts.Timeout+5*time.Second)
	defer cancel()
	cmd := l.Command(ctx, Client, l.cfg.Bins.LabNode, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return telegramtest.Stats{}, fmt.Errorf("censorlab: labnode tg: %w: %s", err, bytes.TrimSpace(stderr.Bytes()))
	}
	var st telegramtest.Stats
	if err := json.Unmarshal(out, &st); err != nil {
		return st, fmt.Errorf("censorlab: labnode tg printed %q: %w", out, err)
	}
	return st, nil
}

// A SessionEvent is a session the merpati client brought up, read from
// its log.
type SessionEvent struct {
	Time    time.Time
	Relay   string // "host:port"
	Carrier string // link.CarrierTLS or link.CarrierQUIC
}

// ClientSessions returns the sessions a client started by
// [Lab.StartClient] has brought up or switched to so far, oldest first,
// from its "session up" and "re-race: switched" log records.
func ClientSessions(p *Proc) []SessionEvent {
	var evs []SessionEvent
	sc := bufio.NewScanner(strings.NewReader(p.Output()))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var rec struct {
			Time      time.Time `json:"time"`
			Msg       string    `json:"msg"`
			Relay     string    `json:"relay"`
			Transport string    `json:"transport"`
		}
		if json.Unmarshal(sc.Bytes(), &rec) != nil || rec.Msg != "session up" && rec.Msg != "re-race: switched" {
			continue
		}
		evs = append(evs, SessionEvent{Time: rec.Time, Relay: rec.Relay, Carrier: rec.Transport})
	}
	return evs
}

// Bins returns the programs the lab runs.
func (l *Lab) Bins() Bins { return l.cfg.Bins }
