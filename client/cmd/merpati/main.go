// Command merpati is the merpati client: run it next to the Telegram app,
// give it the share link you received, and point Telegram at it. It
// carries Telegram's connections, disguised as a browser's, to a relay
// outside the censored network.
//
// Usage:
//
//	merpati import LINK                      keep LINK in your config directory
//	merpati run [--link LINK] [--listen ADDR] [--socks-user USER:PASS | --allow-no-auth] [--log-level LEVEL]
//	            [--log-format text|json] [--mtproxy ADDR [--mtproxy-secret SECRET]] [--resolvers LIST]
//	merpati refresh [--link LINK] [--resolvers LIST]   fetch the signed relay list over DNS now
//
// run starts a SOCKS5 proxy on 127.0.0.1:1080 (change it with --listen) and
// prints the tg://socks link and QR code that Telegram apps import: open
// the link on the same device, or in Telegram go to Settings → Data and
// Storage → Proxy → Add proxy → SOCKS5, server 127.0.0.1, port 1080.
// Without --link it uses the link saved by import. --socks-user requires
// that user name and password from SOCKS5 clients (RFC 1929). It is
// required when --listen is not a loopback address, such as 0.0.0.0:1080
// to serve other devices on your network, since anyone who reaches the
// port would otherwise use your link; --allow-no-auth lifts that when a
// firewall keeps everyone else out. An IPv4 address, 0.0.0.0 included, is
// listened on over IPv4 only; for 0.0.0.0 the link names 127.0.0.1, and
// the addresses other devices can use are listed.
//
// If the relay refuses the link's key (it was revoked or has expired),
// run says so in its log: ask whoever gave you the link for a new one and
// import it.
//
// --mtproxy also starts a local MTProxy front (FakeTLS, "ee" secret) on
// ADDR, such as 127.0.0.1:1443, for apps that prefer MTProxy to SOCKS5, and
// prints its tg://proxy link and QR code. Its secret is made once and kept
// in the config directory (file mtproxy-secret); --mtproxy-secret gives one
// instead (hex or base64url).
//
// --config-dir (default: your OS's config directory, such as
// ~/.config/merpati) is where import keeps the link, in a file only you can
// read (0600, in a 0700 directory, even if an older link file was not).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/merpati/merpati/client"
	"github.com/merpati/merpati/transport/atomicfile"
	"github.com/merpati/merpati/transport/cmdmain"
	"github.com/merpati/merpati/transport/link"
	"github.com/merpati/merpati/transport/mtproxy"
)

func main() { os.Exit(cmdmain.Main("merpati", run)) }

const usage = `usage:
  merpati import LINK
  merpati run [--link LINK] [--listen 127.0.0.1:1080] [--socks-user USER:PASS | --allow-no-auth] [--mtproxy 127.0.0.1:1443] [--resolvers LIST]
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
	if err := writePrivate(path, []byte(l.String()+"\n"), stderr); err != nil {
		return fmt.Errorf("import: %w", err)
	}
	fmt.Fprintf(stdout, "Link for %s saved to %s. Start with: merpati run\n", strings.Join(l.Relays, ", "), path)
	return nil
}

func cmdRun(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, dir := newFlagSet("run", stderr)
	linkFlag := fs.String("link", "", "share link merpati://... (default: the imported one)")
	listen := fs.String("listen", client.DefaultListen, "SOCKS5 listen address")
	socksUser := fs.String("socks-user", "", "require SOCKS5 USER:PASS (needed when --listen is not a loopback address)")
	allowNoAuth := fs.Bool("allow-no-auth", false, "allow a non-loopback --listen without --socks-user (only if a firewall keeps everyone else out)")
	logFlags := cmdmain.AddLogFlags(fs, "info")
	mtListen := fs.String("mtproxy", "", "also serve a local MTProxy (FakeTLS) front on this address, such as 127.0.0.1:1443")
	mtSecret := fs.String("mtproxy-secret", "", "ee secret for --mtproxy, hex or base64url (default: one kept in the config dir)")
	resolvers := fs.String("resolvers", "", "comma-separated resolvers for the DNS bootstrap (default: public DoH and DoT resolvers; plain udp:// and tcp:// only if listed here)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	log, err := logFlags.Logger(stderr)
	if err != nil {
		return err
	}
	l, err := loadLink(*dir, *linkFlag)
	if err != nil {
		return err
	}
	cfg := client.Config{Link: l, Listen: *listen, AllowNoAuth: *allowNoAuth, MTProxyListen: *mtListen, Logger: log}
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
	if *mtListen != "" {
		if cfg.MTProxySecret, err = mtproxySecret(*dir, *mtSecret, l.SNI); err != nil {
			return err
		}
	}
	// Links are shown only once every listener is up: a busy port is
	// reported without first showing a link that would not work.
	cfg.Ready = func(socks, mt net.Addr) error {
		host, port, note := usableAddr(socks)
		tg := link.SocksLink(host, port, user, pass)
		qr, err := link.TerminalQR(tg)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "SOCKS5 proxy for Telegram on %s. Open this link in Telegram on this device:\n\n%s\n\n%s\n%s", socks, tg, qr, note)
		if mt == nil {
			return nil
		}
		host, port, note = usableAddr(mt)
		tg, _ = link.ProxyLink(host, port, cfg.MTProxySecret.String())
		if qr, err = link.TerminalQR(tg); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "\nMTProxy for Telegram on %s. Or open this link in Telegram on this device:\n\n%s\n\n%s\n%s", mt, tg, qr, note)
		return nil
	}
	err = client.Run(ctx, cfg)
	if errors.Is(err, client.ErrOpenProxy) {
		return fmt.Errorf("%w.\nAdd --socks-user USER:PASS (Telegram asks for them when adding the proxy), "+
			"or listen on 127.0.0.1 (--listen 127.0.0.1:1080); "+
			"--allow-no-auth skips this check if a firewall already keeps everyone else out", err)
	}
	return err
}

// usableAddr returns the host and port of a, a listening address, to put
// in a link for an app on this device, and a note for other devices. An
// unspecified address (0.0.0.0, ::) cannot be dialled: the link names
// 127.0.0.1 instead (which a dual-stack listener serves too), and the note
// lists this machine's own addresses for apps elsewhere on the network.
func usableAddr(a net.Addr) (host string, port uint16, note string) {
	ta, ok := a.(*net.TCPAddr)
	if !ok {
		h, p, _ := net.SplitHostPort(a.String())
		n, _ := strconv.ParseUint(p, 10, 16)
		return h, uint16(n), ""
	}
	port = uint16(ta.Port)
	if !ta.IP.IsUnspecified() {
		return ta.IP.String(), port, ""
	}
	v4only := ta.IP.To4() != nil
	var lan []string
	if addrs, err := net.InterfaceAddrs(); err == nil {
		for _, ia := range addrs {
			ipn, ok := ia.(*net.IPNet)
			if !ok || !ipn.IP.IsGlobalUnicast() || v4only && ipn.IP.To4() == nil {
				continue
			}
			lan = append(lan, net.JoinHostPort(ipn.IP.String(), strconv.Itoa(int(port))))
		}
	}
	if len(lan) > 0 {
		note = "From other devices on your network, use this machine's address instead of 127.0.0.1: " + strings.Join(lan, ", ") + "\n"
	}
	return "127.0.0.1", port, note
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
	if err := writePrivate(path, []byte(s.String()+"\n"), io.Discard); err != nil {
		return mtproxy.Secret{}, fmt.Errorf("keep MTProxy secret: %w", err)
	}
	return s, nil
}

// writePrivate replaces the file at path with data, readable by this user
// only (0600) even if the file was readable by others before
// ([atomicfile.Write]). The directory is made (0700) if missing, and made
// 0700 if group or others could read or enter it; if that fails (a
// directory of someone else's) a warning goes to warn.
func writePrivate(path string, data []byte, warn io.Writer) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if fi, err := os.Stat(dir); err == nil && fi.Mode().Perm()&0o077 != 0 {
		if err := os.Chmod(dir, 0o700); err != nil {
			fmt.Fprintf(warn, "merpati: warning: %s can be read by other users and could not be made private: %v\n", dir, err)
		}
	}
	return atomicfile.Write(path, data, 0o600)
}
