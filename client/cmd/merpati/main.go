// Command merpati is the merpati client: run it next to the Telegram app,
// give it the share link you received, and point Telegram at it. It
// carries Telegram's connections, disguised as a browser's, to a relay
// outside the censored network.
//
// Usage:
//
//	merpati import LINK                      keep LINK in your config directory
//	merpati run [--link LINK] [--listen ADDR] [--socks-user USER:PASS] [--log-level LEVEL] [--log-format text|json]
//	            [--mtproxy ADDR [--mtproxy-secret SECRET]] [--resolvers LIST]
//	merpati refresh [--link LINK] [--resolvers LIST]   fetch the signed relay list over DNS now
//
// run starts a SOCKS5 proxy on 127.0.0.1:1080 (change it with --listen) and
// prints the tg://socks link and QR code that Telegram apps import: open
// the link on the same device, or in Telegram go to Settings → Data and
// Storage → Proxy → Add proxy → SOCKS5, server 127.0.0.1, port 1080.
// Without --link it uses the link saved by import. --socks-user requires
// that user name and password from SOCKS5 clients (RFC 1929), useful when
// --listen is not a loopback address.
//
// --mtproxy also starts a local MTProxy front (FakeTLS, "ee" secret) on
// ADDR, such as 127.0.0.1:1443, for apps that prefer MTProxy to SOCKS5, and
// prints its tg://proxy link and QR code. Its secret is made once and kept
// in the config directory (file mtproxy-secret); --mtproxy-secret gives one
// instead (hex or base64url).
//
// --config-dir (default: your OS's config directory, such as
// ~/.config/merpati) is where import keeps the link, in a file only you can
// read.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/merpati/merpati/client"
	"github.com/merpati/merpati/transport/link"
	"github.com/merpati/merpati/transport/mtproxy"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "merpati:", err)
		os.Exit(1)
	}
}

const usage = `usage:
  merpati import LINK
  merpati run [--link LINK] [--listen 127.0.0.1:1080] [--socks-user USER:PASS] [--mtproxy 127.0.0.1:1443] [--resolvers LIST]
  merpati refresh [--link LINK] [--resolvers LIST]
Run "merpati COMMAND -h" for a command's flags.`

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprintln(stderr, usage)
		return flag.ErrHelp
	}
	switch args[0] {
	case "import":
		return cmdImport(args[1:], stdout, stderr)
	case "run":
		return cmdRun(ctx, args[1:], stdout, stderr)
	case "refresh":
		return cmdRefresh(ctx, args[1:], stdout, stderr)
	case "-h", "-help", "--help", "help":
		fmt.Fprintln(stdout, usage)
		return nil
	}
	fmt.Fprintln(stderr, usage)
	return fmt.Errorf("unknown command %q", args[0])
}

func newFlagSet(name string, stderr io.Writer) (*flag.FlagSet, *string) {
	fs := flag.NewFlagSet("merpati "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("config-dir", "", "where the imported link is kept (default: OS config dir/merpati)")
	return fs, dir
}

func linkPath(dir string) (string, error) {
	if dir == "" {
		base, err := os.UserConfigDir()
		if err != nil {
			return "", fmt.Errorf("no config directory (use --config-dir): %w", err)
		}
		dir = filepath.Join(base, "merpati")
	}
	return filepath.Join(dir, "link"), nil
}

// loadLink parses text, or when it is empty, the link imported into the
// config directory dir.
func loadLink(dir, text string) (*link.Link, error) {
	if text == "" {
		path, err := linkPath(dir)
		if err != nil {
			return nil, err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("no --link given and none imported (%w); run: merpati import 'merpati://...'", err)
		}
		text = strings.TrimSpace(string(b))
	}
	return link.Parse(text)
}

func cmdImport(args []string, stdout, stderr io.Writer) error {
	fs, dir := newFlagSet("import", stderr)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return errors.New("import: want exactly one LINK")
	}
	l, err := link.Parse(strings.TrimSpace(fs.Arg(0)))
	if err != nil {
		return fmt.Errorf("import: %w", err)
	}
	path, err := linkPath(*dir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	if err := os.WriteFile(path, []byte(l.String()+"\n"), 0o600); err != nil {
		return fmt.Errorf("import: %w", err)
	}
	fmt.Fprintf(stdout, "Link for %s saved to %s. Start with: merpati run\n", strings.Join(l.Relays, ", "), path)
	return nil
}

func cmdRun(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, dir := newFlagSet("run", stderr)
	linkFlag := fs.String("link", "", "share link merpati://... (default: the imported one)")
	listen := fs.String("listen", client.DefaultListen, "SOCKS5 listen address")
	socksUser := fs.String("socks-user", "", "require SOCKS5 USER:PASS")
	level := fs.String("log-level", "info", "log level: debug, info, warn, error")
	format := fs.String("log-format", "text", "log format: text or json")
	mtListen := fs.String("mtproxy", "", "also serve a local MTProxy (FakeTLS) front on this address, such as 127.0.0.1:1443")
	mtSecret := fs.String("mtproxy-secret", "", "ee secret for --mtproxy, hex or base64url (default: one kept in the config dir)")
	resolvers := fs.String("resolvers", "", "comma-separated resolvers for the DNS bootstrap (default: public DoH, DoT and DNS resolvers)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	log, err := newLogger(stderr, *level, *format)
	if err != nil {
		return err
	}
	l, err := loadLink(*dir, *linkFlag)
	if err != nil {
		return err
	}
	cfg := client.Config{Link: l, Listen: *listen, Logger: log}
	if cfg.Resolvers, cfg.ListCache, err = bootstrapSettings(*dir, *resolvers, l); err != nil {
		return err
	}
	var user, pass string
	if *socksUser != "" {
		var ok bool
		user, pass, ok = strings.Cut(*socksUser, ":")
		if !ok || user == "" {
			return errors.New("--socks-user: want USER:PASS")
		}
		cfg.SocksUsers = map[string]string{user: pass}
	}
	c, err := client.New(cfg)
	if err != nil {
		return err
	}
	defer c.Close()
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	host, portStr, _ := net.SplitHostPort(ln.Addr().String())
	port, _ := strconv.Atoi(portStr)
	tg := link.SocksLink(host, uint16(port), user, pass)
	qr, err := link.TerminalQR(tg)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "SOCKS5 proxy for Telegram on %s. Open this link in Telegram on this device:\n\n%s\n\n%s\n", ln.Addr(), tg, qr)
	if *mtListen == "" {
		log.Info("client started", "socks", ln.Addr().String(), "relays", len(l.Relays))
		return c.ServeSOCKS(ctx, ln)
	}
	secret, err := mtproxySecret(*dir, *mtSecret, l.SNI)
	if err != nil {
		ln.Close()
		return err
	}
	mln, err := net.Listen("tcp", *mtListen)
	if err != nil {
		ln.Close()
		return err
	}
	host, portStr, _ = net.SplitHostPort(mln.Addr().String())
	port, _ = strconv.Atoi(portStr)
	tg, _ = link.ProxyLink(host, uint16(port), secret.String())
	if qr, err = link.TerminalQR(tg); err != nil {
		ln.Close()
		mln.Close()
		return err
	}
	fmt.Fprintf(stdout, "\nMTProxy for Telegram on %s. Or open this link in Telegram on this device:\n\n%s\n\n%s\n", mln.Addr(), tg, qr)
	log.Info("client started", "socks", ln.Addr().String(), "mtproxy", mln.Addr().String(), "relays", len(l.Relays))
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	front := make(chan error, 1)
	go func() { front <- c.ServeMTProxy(ctx, mln, secret); cancel() }()
	err = c.ServeSOCKS(ctx, ln)
	cancel()
	return errors.Join(err, <-front)
}

// mtproxySecret returns the local MTProxy front's secret: text if given
// (hex or base64url), else the one kept in the config directory, made
// (with host as its cover name) on first use.
func mtproxySecret(dir, text, host string) (mtproxy.Secret, error) {
	if text != "" {
		s, err := mtproxy.ParseSecret(text)
		if err != nil {
			return mtproxy.Secret{}, fmt.Errorf("--mtproxy-secret: %w", err)
		}
		return s, nil
	}
	lp, err := linkPath(dir)
	if err != nil {
		return mtproxy.Secret{}, err
	}
	path := filepath.Join(filepath.Dir(lp), "mtproxy-secret")
	if b, err := os.ReadFile(path); err == nil {
		s, err := mtproxy.ParseSecret(string(b))
		if err != nil {
			return mtproxy.Secret{}, fmt.Errorf("%s: %w", path, err)
		}
		return s, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return mtproxy.Secret{}, err
	}
	if host == "" {
		host = "localhost"
	}
	s, err := mtproxy.NewSecret(host)
	if err != nil {
		return mtproxy.Secret{}, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return mtproxy.Secret{}, err
	}
	if err := os.WriteFile(path, []byte(s.String()+"\n"), 0o600); err != nil {
		return mtproxy.Secret{}, fmt.Errorf("keep MTProxy secret: %w", err)
	}
	return s, nil
}

func newLogger(w io.Writer, level, format string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	opts := &slog.HandlerOptions{Level: l}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format: want text or json, not %q", format)
}
