package main

// merpati refresh [--link LINK] [--resolvers LIST] [--config-dir DIR]
//
// refresh fetches the signed relay list named by the link's dns= and lk=
// fields now, over the resolvers given (comma-separated: udp://IP,
// tcp://IP, tls://IP[:853], https://HOST/dns-query; default a few public
// DoH, DoT and plain resolvers), verifies it and keeps it in the config
// directory, where `merpati run` finds it. run does the same by itself
// when none of the relays it knows answers.

import (
	"context"
	"crypto/ed25519"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/merpati/merpati/client/bootstrap"
	"github.com/merpati/merpati/transport/cmdmain"
	"github.com/merpati/merpati/transport/link"
)

// defaultResolvers are asked when --resolvers is not given: DoH and DoT
// first (harder to tamper with or block selectively), plain DNS last.
var defaultResolvers = []string{
	"https://cloudflare-dns.com/dns-query",
	"https://dns.google/dns-query",
	"tls://1.1.1.1",
	"tls://9.9.9.9",
	"udp://8.8.8.8",
}

// bootstrapSettings returns the resolvers and list cache file for l.
func bootstrapSettings(dir, resolvers string, l *link.Link) ([]string, string, error) {
	if len(l.Bootstrap) == 0 || len(l.ListKey) == 0 {
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
	resolvers := fs.String("resolvers", "", "comma-separated resolvers (default: public DoH, DoT and DNS resolvers)")
	logFlags := cmdmain.AddLogFlags(fs, "warn")
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
		return errors.New("refresh: the link has no bootstrap domain (dns=) and list key (lk=)")
	}
	if err := os.MkdirAll(filepath.Dir(cache), 0o700); err != nil {
		return err
	}
	f, err := bootstrap.New(bootstrap.Config{
		Domains:   l.Bootstrap,
		ListKey:   ed25519.PublicKey(l.ListKey),
		Resolvers: rs,
		CachePath: cache,
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
