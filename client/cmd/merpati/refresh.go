package main

// merpati refresh [--link LINK] [--resolvers LIST] [--config-dir DIR]
//
// refresh fetches the relay list named by the link's dns=, lk= and bk=
// fields now, over the resolvers given (comma-separated:
// https://HOST/dns-query, tls://IP[:853], and only if you ask for them
// plain udp://IP and tcp://IP; default a few public DoH and DoT
// resolvers, never plain DNS), opens and verifies it and keeps it in the
// config directory, where `merpati run` finds it. run does the same by
// itself when none of the relays it knows answers. A link with dns= and
// lk= but no bk= is of the old format, whose list is no longer published:
// refresh says so, and the user needs a new link.
//
// --clock-offset DURATION, left out of the usage text, moves the clock
// the fetch goes by (which day's names it asks, and the list's expiry):
// the censor lab uses it to capture the bootstrap of another day.

import (
	"context"
	"crypto/ed25519"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/merpati/merpati/client/bootstrap"
	"github.com/merpati/merpati/transport/cmdmain"
	"github.com/merpati/merpati/transport/link"
)

// defaultResolvers are asked when --resolvers is not given: DoH and DoT
// only, so that nobody on the path sees the bootstrap's queries. Plain
// DNS is used only when the user lists it in --resolvers.
var defaultResolvers = []string{
	"https://cloudflare-dns.com/dns-query",
	"https://dns.google/dns-query",
	"tls://1.1.1.1",
	"tls://9.9.9.9",
}

// bootstrapSettings returns the resolvers and list cache file for l.
func bootstrapSettings(dir, resolvers string, l *link.Link) ([]string, string, error) {
	if l.CheckBootstrap() != nil {
		return nil, "", nil
	}
	rs := defaultResolvers
	if resolvers != "" {
		rs = strings.Split(resolvers, ",")
	}
	p, err := linkPath(dir)
	if err != nil {
		return nil, "", err
	}
	// One cache per list key, so two links never mix their lists.
	cache := filepath.Join(filepath.Dir(p), "relays-"+hex.EncodeToString(l.ListKey[:8])+".bin")
	return rs, cache, nil
}

func cmdRefresh(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, dir := newFlagSet("refresh", stderr)
	linkFlag := fs.String("link", "", "share link merpati://... (default: the imported one)")
	resolvers := fs.String("resolvers", "", "comma-separated resolvers (default: public DoH and DoT resolvers; plain udp:// and tcp:// only if listed here)")
	logFlags := cmdmain.AddLogFlags(fs, "warn")
	clockOffset := fs.Duration("clock-offset", 0, "")
	fs.Usage = func() { usageWithout(fs, "clock-offset") }
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
	rs, cache, err := bootstrapSettings(*dir, *resolvers, l)
	if err != nil {
		return err
	}
	if rs == nil {
		if err := l.CheckBootstrap(); errors.Is(err, link.ErrOldBootstrap) {
			return fmt.Errorf("refresh: %w", err)
		}
		return errors.New("refresh: the link has no DNS bootstrap (dns=, lk= and bk=)")
	}
	if err := os.MkdirAll(filepath.Dir(cache), 0o700); err != nil {
		return err
	}
	f, err := bootstrap.New(bootstrap.Config{
		Domains:   l.Bootstrap,
		ListKey:   ed25519.PublicKey(l.ListKey),
		Keys:      l.BootstrapKeys,
		Resolvers: rs,
		CachePath: cache,
		Now:       func() time.Time { return time.Now().Add(*clockOffset) },
		Logger:    log,
	})
	if err != nil {
		return err
	}
	defer f.Close()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	start := time.Now()
	list, err := f.Fetch(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "Relay list %d (expires %s) fetched in %v and saved to %s:\n",
		list.Seq, list.Expires.Local().Format(time.RFC1123), time.Since(start).Round(time.Millisecond), cache)
	for _, e := range list.Entries {
		fmt.Fprintf(stdout, "  %s (%s)\n", strings.Join(e.Relays, ", "), strings.Join(e.Link().CarrierList(), ", "))
	}
	return nil
}

// usageWithout prints fs's usage without the flags named hidden.
func usageWithout(fs *flag.FlagSet, hidden ...string) {
	shown := flag.NewFlagSet(fs.Name(), flag.ContinueOnError)
	shown.SetOutput(fs.Output())
	fs.VisitAll(func(f *flag.Flag) {
		if !slices.Contains(hidden, f.Name) {
			shown.Var(f.Value, f.Name, f.Usage)
		}
	})
	fmt.Fprintf(fs.Output(), "Usage of %s:\n", fs.Name())
	shown.PrintDefaults()
}
