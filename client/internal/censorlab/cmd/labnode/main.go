// Command labnode runs the parts of merpati's censor lab (package
// censorlab) that are not merpati itself, each inside a lab namespace, and
// the lab itself for people (scripts/censor-lab.sh).
//
// Usage:
//
//	labnode dc --listen ADDR --key-file FILE [--id 2]
//	labnode cover --listen ADDR [--name cover.merpati.test] [--no-http3]
//	labnode tg --target ADDR --dc-key FILE [--socks ADDR] [--id 2] [--rpcs 1] [--timeout 20s]
//	labnode lab --bins DIR [--block-udp] [--block-tcp ADDR:PORT]... [--blackhole ADDR]... [--drop-dc]
//	            [--netem DELAY] [--loss PERCENT] [--client] [--check] [--log-level LEVEL] [--log-format text|json]
//	labnode cleanup [--prefix mpl]
//	labnode delay [--dev delay0] --delay DURATION [--loss PERCENT]
//
// dc serves a gotd tgtest datacenter (package telegramtest) at --listen: the
// DC itself listens on loopback and labnode forwards --listen to it. Its
// public RSA key is written as PEM to --key-file once it accepts
// connections.
//
// cover serves a small HTTPS site with a fresh self-signed certificate for
// --name, the relay's cover site.
//
// tg runs a real gotd MTProto client against the DC whose key is in
// --dc-key: a fresh auth key exchange, initConnection and --rpcs echo RPCs,
// through the SOCKS5 proxy at --socks (a merpati client), or straight to
// --target. It prints the timings as JSON (telegramtest.Stats, durations
// in nanoseconds). --target must be a lab (10.201.0.0/16) or loopback
// address.
//
// lab builds a censor lab with the binaries in --bins (merpati,
// merpati-relay, labnode), starts the DC, the cover site and the relay,
// applies the censor rules given, optionally starts a merpati client
// (--client) and runs one MTProto client through it (--check), prints how
// to reach every host, and waits for an interrupt; then it tears
// everything down.
//
// cleanup deletes namespaces left behind by labs whose process is gone.
//
// delay is netem for kernels without it (censorlab's Lab.Netem starts it in
// the censor host): it creates a TUN interface, and writes every packet the
// censor routes into it back after --delay, dropping --loss percent.
package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"golang.org/x/net/proxy"

	"github.com/merpati/merpati/client/internal/censorlab"
	"github.com/merpati/merpati/client/internal/telegramtest"
	"github.com/merpati/merpati/relay/relaytest/coversite"
	"github.com/merpati/merpati/transport"
	"github.com/merpati/merpati/transport/atomicfile"
	"github.com/merpati/merpati/transport/cmdmain"
	"github.com/merpati/merpati/transport/tlscarrier"
)

func main() { os.Exit(cmdmain.Main("labnode", run)) }

const usage = `usage:
  labnode dc --listen ADDR --key-file FILE [--id 2]
  labnode cover --listen ADDR [--name cover.merpati.test] [--no-http3]
  labnode tg --target ADDR --dc-key FILE [--socks ADDR] [--id 2] [--rpcs 1] [--timeout 20s]
  labnode lab --bins DIR [--block-udp] [--block-tcp ADDR:PORT]... [--blackhole ADDR]... [--drop-dc]
              [--netem DELAY] [--loss PERCENT] [--client] [--check] [--log-level LEVEL] [--log-format text|json]
  labnode cleanup [--prefix mpl]
  labnode delay [--dev delay0] --delay DURATION [--loss PERCENT]
Run "labnode COMMAND -h" for a command's flags.`

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprintln(stderr, usage)
		return flag.ErrHelp
	}
	switch args[0] {
	case "dc":
		return cmdDC(ctx, args[1:], stderr)
	case "cover":
		return cmdCover(ctx, args[1:], stderr)
	case "tg":
		return cmdTG(ctx, args[1:], stdout, stderr)
	case "lab":
		return cmdLab(ctx, args[1:], stdout, stderr)
	case "cleanup":
		return cmdCleanup(ctx, args[1:], stdout, stderr)
	case "delay":
		return cmdDelay(ctx, args[1:], stderr)
	case "-h", "-help", "--help", "help":
		fmt.Fprintln(stdout, usage)
		return nil
	}
	fmt.Fprintln(stderr, usage)
	return flag.ErrHelp
}

func newFlagSet(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("labnode "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

func parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%s: unexpected arguments %q", fs.Name(), fs.Args())
	}
	return nil
}

func cmdDC(ctx context.Context, args []string, stderr io.Writer) error {
	fs := newFlagSet("dc", stderr)
	listen := fs.String("listen", "", "lab address to serve the DC at (required)")
	keyFile := fs.String("key-file", "", "where to write the DC's public key, PEM (required)")
	id := fs.Int("id", censorlab.DCID, "datacenter number")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *listen == "" || *keyFile == "" {
		return errors.New("dc: --listen and --key-file are required")
	}
	// telegramtest serves only on loopback; the lab address is a plain
	// TCP forwarder to it.
	dc, err := telegramtest.ListenDC(ctx, *id, "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer dc.Close()
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("dc: %w", err)
	}
	context.AfterFunc(ctx, func() { ln.Close() })
	if err := atomicfile.Write(*keyFile, dc.PublicKeyPEM(), 0o644); err != nil {
		return fmt.Errorf("dc: %w", err)
	}
	fmt.Fprintf(stderr, "labnode dc: DC %d at %s (tgtest on %s)\n", *id, ln.Addr(), dc.Addr)
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("dc: %w", err)
		}
		go func() {
			defer c.Close()
			var d net.Dialer
			up, err := d.DialContext(ctx, "tcp", dc.Addr)
			if err != nil {
				return
			}
			defer up.Close()
			transport.Splice(c, up, nil)
		}()
	}
}

func cmdCover(ctx context.Context, args []string, stderr io.Writer) error {
	fs := newFlagSet("cover", stderr)
	listen := fs.String("listen", "", "address to serve HTTPS at (required)")
	name := fs.String("name", censorlab.CoverName, "server name of the certificate")
	noHTTP3 := fs.Bool("no-http3", false, "serve no HTTP/3 (leave the UDP port closed)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *listen == "" {
		return errors.New("cover: --listen is required")
	}
	certPEM, keyPEM, err := tlscarrier.NewCertificate(*name)
	if err != nil {
		return fmt.Errorf("cover: %w", err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return fmt.Errorf("cover: %w", err)
	}
	ln, pc, err := coversite.Listen(ctx, *listen, *noHTTP3)
	if err != nil {
		return fmt.Errorf("cover: %w", err)
	}
	fmt.Fprintf(stderr, "labnode cover: https://%s/ at %s (HTTP/3: %v)\n", *name, ln.Addr(), pc != nil)
	page := fmt.Sprintf("<!doctype html><title>%s</title><h1>Welcome to %s</h1>\n", *name, *name)
	if err := coversite.Serve(ctx, ln, pc, cert, coversite.Handler(page)); err != nil {
		return fmt.Errorf("cover: %w", err)
	}
	return nil
}

// labPrefix is the lab's address range; tg dials nothing else but
// loopback.
var labPrefix = netip.MustParsePrefix(censorlab.LabPrefix)

func checkLabAddr(flagName, addr string) error {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil || !(labPrefix.Contains(ap.Addr()) || ap.Addr().IsLoopback()) {
		return fmt.Errorf("--%s %q: want a lab (%s) or loopback IP and port", flagName, addr, censorlab.LabPrefix)
	}
	return nil
}

func cmdTG(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("tg", stderr)
	target := fs.String("target", "", "the DC's lab address (required)")
	keyFile := fs.String("dc-key", "", "file with the DC's public key, PEM (required)")
	socks := fs.String("socks", "", "SOCKS5 proxy to go through (a merpati client); empty: direct")
	id := fs.Int("id", censorlab.DCID, "datacenter number")
	rpcs := fs.Int("rpcs", 1, "echo RPCs after the key exchange")
	timeout := fs.Duration("timeout", 20*time.Second, "give up after this long")
	if err := parse(fs, args); err != nil {
		return err
	}
	if err := checkLabAddr("target", *target); err != nil {
		return err
	}
	pem, err := os.ReadFile(*keyFile)
	if err != nil {
		return fmt.Errorf("tg: %w", err)
	}
	key, err := telegramtest.ParsePublicKeyPEM(pem)
	if err != nil {
		return err
	}
	// The client's DC list names a loopback placeholder, which Run's
	// guard accepts; every connection is then made to --target by dial
	// below, itself checked to be a lab address, so nothing can leave the
	// lab.
	dc, err := telegramtest.RemoteDC(*id, "127.0.0.1:443", key)
	if err != nil {
		return err
	}
	var d net.Dialer
	dial := func(ctx context.Context, network, _ string) (net.Conn, error) {
		return d.DialContext(ctx, network, *target)
	}
	if *socks != "" {
		if err := checkLabAddr("socks", *socks); err != nil {
			return err
		}
		p, err := proxy.SOCKS5("tcp", *socks, nil, proxy.Direct)
		if err != nil {
			return fmt.Errorf("tg: %w", err)
		}
		cd := p.(proxy.ContextDialer)
		dial = func(ctx context.Context, network, _ string) (net.Conn, error) {
			return cd.DialContext(ctx, network, *target)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	st, err := telegramtest.Run(ctx, dc, dial, *rpcs)
	if err != nil {
		return err
	}
	return json.NewEncoder(stdout).Encode(st)
}

// listFlag is a repeatable string flag.
type listFlag []string

func (f *listFlag) String() string     { return fmt.Sprint(*f) }
func (f *listFlag) Set(v string) error { *f = append(*f, v); return nil }

func cmdLab(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("lab", stderr)
	bins := fs.String("bins", "", "directory with merpati, merpati-relay and labnode (required)")
	prefix := fs.String("prefix", censorlab.DefaultPrefix, "namespace name prefix")
	blockUDP := fs.Bool("block-udp", false, "censor: drop all UDP")
	var blockTCP, blackhole listFlag
	fs.Var(&blockTCP, "block-tcp", "censor: drop TCP to ADDR:PORT (repeatable)")
	fs.Var(&blackhole, "blackhole", "censor: drop everything to and from ADDR (repeatable)")
	dropDC := fs.Bool("drop-dc", false, "censor: drop the client's traffic to the DC prefix "+censorlab.DCPrefix)
	netem := fs.Duration("netem", 0, "censor: delay each packet by this much, each way (tc netem, or user space without sch_netem)")
	loss := fs.Float64("loss", 0, "censor: drop this percentage of packets (netem with --netem, else nftables)")
	mtu := fs.Int("mtu", 0, "censor: forward IP packets of at most this many bytes towards the client and the relay (1280 to 1500)")
	startClient := fs.Bool("client", false, "start a merpati client in the client host")
	check := fs.Bool("check", false, "run one MTProto client through the merpati client (implies --client) and directly")
	logFlags := cmdmain.AddLogFlags(fs, "info")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *bins == "" {
		return errors.New("lab: --bins is required (scripts/censor-lab.sh builds them)")
	}
	log, err := logFlags.Logger(stderr)
	if err != nil {
		return err
	}
	lab, err := censorlab.New(ctx, censorlab.Config{
		Prefix: *prefix,
		Logger: log,
		Bins: censorlab.Bins{
			Merpati:      filepath.Join(*bins, "merpati"),
			MerpatiRelay: filepath.Join(*bins, "merpati-relay"),
			LabNode:      filepath.Join(*bins, "labnode"),
		},
	})
	if err != nil {
		return err
	}
	defer lab.Close()
	svc, err := lab.StartServices(ctx)
	if err != nil {
		return err
	}
	if *blockUDP {
		if err := lab.BlockUDP(); err != nil {
			return err
		}
	}
	for _, a := range blockTCP {
		host, port, err := net.SplitHostPort(a)
		n, perr := strconv.Atoi(port)
		if err != nil || perr != nil {
			return fmt.Errorf("lab: --block-tcp %q: want ADDR:PORT", a)
		}
		if err := lab.BlockTCP(host, n); err != nil {
			return err
		}
	}
	for _, a := range blackhole {
		if err := lab.Blackhole(a); err != nil {
			return err
		}
	}
	if *mtu != 0 {
		if err := lab.MTU(*mtu); err != nil {
			return err
		}
	}
	if *dropDC {
		if err := lab.DropTo(censorlab.DCPrefix); err != nil {
			return err
		}
	}
	switch {
	case *netem > 0:
		if err := lab.Netem(*netem, *loss); err != nil {
			return err
		}
	case *loss > 0:
		if err := lab.Loss(*loss); err != nil {
			return err
		}
	}
	if *startClient || *check {
		if _, err := lab.StartClient(ctx, "merpati", svc.Link); err != nil {
			return err
		}
	}

	fmt.Fprintf(stdout, `censor lab %s is up (logs in %s)
  namespaces: %s %s %s %s
  client %s  ->  censor  ->  relay1 %s:%d, relay2 %s:%d  ->  DC %d at %s:%d
  share link: %s
  censor rules:
%s
Run commands in a host with: ip netns exec %s COMMAND
`, lab.ID, lab.Dir, lab.NS(censorlab.Client), lab.NS(censorlab.Censor), lab.NS(censorlab.Relay), lab.NS(censorlab.DC),
		censorlab.ClientAddr, censorlab.Relay1Addr, censorlab.RelayPort, censorlab.Relay2Addr, censorlab.RelayPort,
		censorlab.DCID, censorlab.DCAddr, censorlab.DCPort, svc.Link, lab.Rules(), lab.NS(censorlab.Client))
	fmt.Fprintf(stdout, "MTProto client: ip netns exec %s %s tg --dc-key %s --target %s:%d [--socks %s]\n",
		lab.NS(censorlab.Client), lab.Bins().LabNode, svc.DCKeyFile, censorlab.DCAddr, censorlab.DCPort, censorlab.ClientListen)
	if *check {
		for _, via := range []string{censorlab.ClientListen, ""} {
			name := "via merpati"
			if via == "" {
				name = "direct"
			}
			st, err := lab.Telegram(ctx, svc, censorlab.TelegramOptions{SOCKS: via, RPCs: 3, Timeout: 15 * time.Second})
			if err != nil {
				fmt.Fprintf(stdout, "check %s: FAILED: %v\n", name, err)
				continue
			}
			fmt.Fprintf(stdout, "check %s: ok, key exchange %v, first RPC %v, %d RPCs in %v\n",
				name, st.KeyExchange.Round(time.Millisecond), st.FirstRPC.Round(time.Millisecond), st.RPCs, st.Total.Round(time.Millisecond))
		}
	}
	fmt.Fprintln(stdout, "Press Ctrl-C to tear the lab down.")
	<-ctx.Done()
	return nil
}

func cmdCleanup(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("cleanup", stderr)
	prefix := fs.String("prefix", censorlab.DefaultPrefix, "namespace name prefix")
	if err := parse(fs, args); err != nil {
		return err
	}
	n, err := censorlab.CleanupStale(ctx, *prefix)
	fmt.Fprintf(stdout, "deleted %d stale lab namespaces\n", n)
	return err
}
