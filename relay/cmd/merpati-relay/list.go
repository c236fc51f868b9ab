package main

// The list and dns commands: the signed bootstrap relay lists, sealed per
// audience, and the authoritative DNS server that publishes them.
//
//	merpati-relay list keygen --out FILE
//	merpati-relay list pub --key FILE
//	merpati-relay list audience --out FILE
//	merpati-relay list add --in relays.json (--link LINK | --link-file FILE | --dir DIR --name KEYNAME)
//	merpati-relay list sign --key FILE --audience FILE --in relays.json --seq N [--ttl 168h] --out list.pem [--buckets N --per-bucket K]
//	merpati-relay list show --in list.pem [--lk PUBKEY]
//	merpati-relay list share --link LINK --zone ZONE (--key FILE | --lk PUBKEY) --audience FILE [--audience FILE]...
//	merpati-relay dns --zone ZONE --list FILE [--list FILE]... [--listen ADDR] [--ns NAME]... [--ns-addr IP]...
//	                  [--rate-limit 20] [--slip 2]
//
// keygen makes the ed25519 list key (PKCS #8 PEM, mode 0600) and prints
// its public half, the lk= value of share links. Keep it away from relays
// and from the DNS server: whoever holds it can point every client at any
// relay.
//
// audience makes a bootstrap key (mode 0600) for one audience: a group of
// people who share a list. Its value is the bk= of their share links;
// from it clients derive the day's DNS names and the key that decrypts
// the list, so that only holders of such a link can find or read the
// list, and a leaked link exposes only its audience's relays. Make one
// per audience (one per group of people you trust alike).
//
// relays.json is {"relays": ["merpati://...", ...]}: one share link per
// relay, each with the access key issued for the list's audience (make one
// per relay with "merpati-relay link add"). add appends one, from a link
// or from a relay directory and key name.
//
// sign writes the signed list for one audience together with the
// audience's bootstrap key (two PEM blocks, mode 0600: the DNS server
// needs both). With --buckets N it writes N lists, FILE.0 ... FILE.N-1,
// each with --per-bucket relays chosen at random, for the DNS server's
// anti-enumeration buckets.
//
// share prints LINK with the bootstrap fields added: dns=ZONE, lk= and one
// bk= per --audience (a person in several audiences can fetch each list).
//
// dns serves the lists under ZONE on UDP and TCP at ADDR (default :53):
// delegate ZONE to this server (NS record at the parent, pointing at a name
// with the server's address, given here as --ns and --ns-addr). Each
// --list is a file written by sign; files with the same bootstrap key are
// the buckets of one audience. A requester network sees one bucket of an
// audience per day. SIGHUP reloads the list files. UDP answers are
// rate-limited per requester network (--rate-limit per second, default
// 20; every --slip-th answer over it, default the 2nd, is an empty
// truncated one that sends real resolvers to TCP), so the server cannot
// amplify floods at a spoofed address. List files of the old format (a
// bare signed list, served in clear under _n.ZONE) are refused: sign them
// again with --audience and hand out new links (see "list share").

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/netip"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/merpati/merpati/relay"
	"github.com/merpati/merpati/relay/access"
	"github.com/merpati/merpati/relay/dnsserver"
	"github.com/merpati/merpati/transport/atomicfile"
	"github.com/merpati/merpati/transport/cmdmain"
	"github.com/merpati/merpati/transport/link"
	"github.com/merpati/merpati/transport/relaylist"
)

// relaysFile is the operator's unsigned list, relays.json.
type relaysFile struct {
	Relays []string `json:"relays"`
}

func readRelays(path string) (relaysFile, error) {
	var rf relaysFile
	data, err := os.ReadFile(path)
	if err != nil {
		return rf, err
	}
	dec := json.NewDecoder(strings.NewReader(string(data)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&rf); err != nil {
		return rf, fmt.Errorf("%s: %w", path, err)
	}
	return rf, nil
}

func cmdList(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprintln(stderr, usage)
		return errors.New("list: want keygen, pub, audience, add, sign, show or share")
	}
	sub, args := args[0], args[1:]
	fs := newFlagSet("list "+sub, stderr)
	out := fs.String("out", "", "keygen, audience: key file to create; sign: list file to write")
	keyFile := fs.String("key", "", "pub, sign, share: list key file")
	var audiences listFlag
	fs.Var(&audiences, "audience", "sign: the audience's bootstrap key file (from list audience); share: the same, repeatable")
	zone := fs.String("zone", "", "share: the zone \"merpati-relay dns\" serves")
	in := fs.String("in", "", "add, sign: relays.json; show: signed list")
	linkStr := fs.String("link", "", "add: share link of the relay; share: the link to add bootstrap fields to")
	linkFile := fs.String("link-file", "", "add: file holding the share link")
	dir := fs.String("dir", "", "add: relay directory to take the link from")
	name := fs.String("name", "", "add: access key name in --dir")
	seq := fs.Uint64("seq", 0, "sign: sequence number, higher than any list signed before (required)")
	ttl := fs.Duration("ttl", 7*24*time.Hour, "sign: how long clients trust the list")
	buckets := fs.Int("buckets", 0, "sign: write this many bucket lists (FILE.0 ...)")
	perBucket := fs.Int("per-bucket", 2, "sign: relays per bucket list")
	lk := fs.String("lk", "", "show: list public key (base64url) to verify with; share: the lk= value (instead of --key)")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	switch sub {
	case "keygen":
		if *out == "" {
			return errors.New("list keygen: --out is required")
		}
		pub, priv, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return err
		}
		pemBytes, err := relaylist.MarshalPrivateKey(priv)
		if err != nil {
			return err
		}
		f, err := os.OpenFile(*out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return fmt.Errorf("list keygen: %w", err)
		}
		if _, err := f.Write(pemBytes); err != nil {
			f.Close()
			return err
		}
		if err := f.Close(); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "List key written to %s. Its public key (lk= in share links):\n%s\n",
			*out, base64.RawURLEncoding.EncodeToString(pub))
		return nil
	case "pub":
		priv, err := loadListKey(*keyFile)
		if err != nil {
			return err
		}
		fmt.Fprintln(stdout, base64.RawURLEncoding.EncodeToString(priv.Public().(ed25519.PublicKey)))
		return nil
	case "audience":
		return listAudience(*out, stdout)
	case "add":
		return listAdd(*in, *linkStr, *linkFile, *dir, *name, stdout)
	case "sign":
		if len(audiences) != 1 {
			return errors.New("list sign: one --audience is required (make one with \"merpati-relay list audience\")")
		}
		return listSign(*keyFile, audiences[0], *in, *out, *seq, *ttl, *buckets, *perBucket, stdout)
	case "share":
		return listShare(*linkStr, *zone, *keyFile, *lk, audiences, stdout)
	case "show":
		if *in == "" {
			return errors.New("list show: --in is required")
		}
		data, err := os.ReadFile(*in)
		if err != nil {
			return err
		}
		b, err := relaylist.ParseBundle(data)
		if err != nil {
			return fmt.Errorf("list show: %s: %w", *in, err)
		}
		var l *relaylist.List
		if *lk != "" {
			pub, err := base64.RawURLEncoding.DecodeString(*lk)
			if err != nil {
				return fmt.Errorf("list show: --lk: %w", err)
			}
			l, err = relaylist.Decode(b.List, relaylist.Verify{Key: pub, Now: time.Now()})
			if err != nil {
				return err
			}
			fmt.Fprintln(stdout, "signature: good")
		} else if l, err = relaylist.ParseUnverified(b.List); err != nil {
			return err
		}
		aud := relaylist.NewAudience(b.Key)
		chunks, err := aud.Chunks(relaylist.PeriodOf(time.Now()), len(b.List))
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "audience %s: seq %d, expires %s, %d relays, %d bytes, %d DNS chunks today\n",
			aud.ID(), l.Seq, l.Expires.Format(time.RFC3339), len(l.Entries), len(b.List), chunks)
		for _, e := range l.Entries {
			fmt.Fprintf(stdout, "  %s %s sni=%s %s\n", strings.Join(e.Relays, ","), strings.Join(e.Link().CarrierList(), ","), e.SNI, e.Name)
		}
		return nil
	}
	return fmt.Errorf("list: unknown subcommand %q", sub)
}

func loadListKey(path string) (ed25519.PrivateKey, error) {
	if path == "" {
		return nil, errors.New("--key is required")
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return relaylist.ParsePrivateKey(data)
}

func listAdd(in, linkStr, linkFile, dir, name string, stdout io.Writer) error {
	if in == "" {
		return errors.New("list add: --in is required")
	}
	var l *link.Link
	switch {
	case linkStr != "" || linkFile != "":
		if linkFile != "" {
			data, err := os.ReadFile(linkFile)
			if err != nil {
				return err
			}
			linkStr = strings.TrimSpace(string(data))
		}
		var err error
		if l, err = link.Parse(linkStr); err != nil {
			return fmt.Errorf("list add: %w", err)
		}
	case dir != "" && name != "":
		d, err := relay.LoadDir(dir)
		if err != nil {
			return err
		}
		entries, err := access.Load(d.KeysPath())
		if err != nil {
			return err
		}
		for _, e := range entries {
			if e.Name == name {
				l = d.Link(e)
			}
		}
		if l == nil {
			return fmt.Errorf("list add: no access key %q in %s", name, dir)
		}
	default:
		return errors.New("list add: give --link, --link-file, or --dir and --name")
	}
	// The list carries its own bootstrap settings; drop the link's.
	l.Bootstrap, l.ListKey, l.BootstrapKeys = nil, nil, nil
	// Concurrent adds must not lose each other's relays.
	unlock, err := access.LockFile(in)
	if err != nil {
		return err
	}
	defer unlock()
	atomicfile.RemoveStale(in)
	rf, err := readRelays(in)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	rf.Relays = append(rf.Relays, l.String())
	data, err := json.MarshalIndent(rf, "", "  ")
	if err != nil {
		return err
	}
	if err := atomicfile.Write(in, append(data, '\n'), 0o600); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s: %d relays (added %s)\n", in, len(rf.Relays), strings.Join(l.Relays, ","))
	return nil
}

// listAudience makes a new bootstrap key file.
func listAudience(out string, stdout io.Writer) error {
	if out == "" {
		return errors.New("list audience: --out is required")
	}
	var key [link.BootstrapKeySize]byte
	if _, err := rand.Read(key[:]); err != nil {
		return err
	}
	f, err := os.OpenFile(out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("list audience: %w", err)
	}
	if _, err := f.Write(relaylist.MarshalBootstrapKey(key)); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "Bootstrap key of audience %s written to %s. Its value (bk= in this audience's share links; keep it as secret as the links):\n%s\n",
		relaylist.NewAudience(key).ID(), out, base64.RawURLEncoding.EncodeToString(key[:]))
	return nil
}

func loadBootstrapKey(path string) ([link.BootstrapKeySize]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return [link.BootstrapKeySize]byte{}, err
	}
	k, err := relaylist.ParseBootstrapKey(data)
	if err != nil {
		return k, fmt.Errorf("%s: %w", path, err)
	}
	return k, nil
}

// listShare prints linkStr with dns=, lk= and bk= set.
func listShare(linkStr, zone, keyFile, lk string, audiences []string, stdout io.Writer) error {
	if linkStr == "" || zone == "" || len(audiences) == 0 || (keyFile == "") == (lk == "") {
		return errors.New("list share: --link, --zone, --audience and one of --key and --lk are required")
	}
	l, err := link.Parse(linkStr)
	if err != nil {
		return fmt.Errorf("list share: %w", err)
	}
	var pub []byte
	if keyFile != "" {
		priv, err := loadListKey(keyFile)
		if err != nil {
			return fmt.Errorf("list share: %w", err)
		}
		pub = priv.Public().(ed25519.PublicKey)
	} else if pub, err = base64.RawURLEncoding.DecodeString(lk); err != nil || len(pub) != ed25519.PublicKeySize {
		return errors.New("list share: --lk: want the 43-character lk= value")
	}
	l.Bootstrap, l.ListKey, l.BootstrapKeys = []string{zone}, pub, nil
	for _, a := range audiences {
		k, err := loadBootstrapKey(a)
		if err != nil {
			return fmt.Errorf("list share: %w", err)
		}
		l.BootstrapKeys = append(l.BootstrapKeys, k)
	}
	if err := l.Validate(); err != nil {
		return fmt.Errorf("list share: %w", err)
	}
	fmt.Fprintln(stdout, l.String())
	return nil
}

func listSign(keyFile, audFile, in, out string, seq uint64, ttl time.Duration, buckets, perBucket int, stdout io.Writer) error {
	priv, err := loadListKey(keyFile)
	if err != nil {
		return fmt.Errorf("list sign: %w", err)
	}
	audKey, err := loadBootstrapKey(audFile)
	if err != nil {
		return fmt.Errorf("list sign: --audience: %w", err)
	}
	aud := relaylist.NewAudience(audKey)
	switch {
	case in == "" || out == "":
		return errors.New("list sign: --in and --out are required")
	case seq == 0:
		return errors.New("list sign: --seq is required (higher than the last list's)")
	case ttl <= 0:
		return errors.New("list sign: --ttl must be positive")
	}
	rf, err := readRelays(in)
	if err != nil {
		return fmt.Errorf("list sign: %w", err)
	}
	var entries []relaylist.Entry
	for i, s := range rf.Relays {
		l, err := link.Parse(s)
		if err != nil {
			return fmt.Errorf("list sign: %s: relay %d: %w", in, i, err)
		}
		entries = append(entries, relaylist.FromLink(l))
	}
	expires := time.Now().Add(ttl)
	write := func(path string, es []relaylist.Entry) error {
		data, err := relaylist.Sign(&relaylist.List{Seq: seq, Expires: expires, Entries: es}, priv)
		if err != nil {
			return err
		}
		chunks, err := aud.Chunks(relaylist.PeriodOf(time.Now()), len(data))
		if err != nil {
			return err
		}
		// The file holds the audience's bootstrap key: 0600.
		if err := atomicfile.Write(path, relaylist.Bundle{Key: audKey, List: data}.Marshal(), 0o600); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s: audience %s, seq %d, %d relays, %d bytes, %d DNS chunks today, expires %s\n",
			path, aud.ID(), seq, len(es), len(data), chunks, expires.Format(time.RFC3339))
		return nil
	}
	if buckets <= 0 {
		return write(out, entries)
	}
	if perBucket <= 0 || perBucket > len(entries) {
		return fmt.Errorf("list sign: --per-bucket must be 1 to %d", len(entries))
	}
	for b := range buckets {
		// A random subset per bucket (Fisher-Yates prefix).
		es := append([]relaylist.Entry(nil), entries...)
		for i := range perBucket {
			j, err := rand.Int(rand.Reader, big.NewInt(int64(len(es)-i)))
			if err != nil {
				return err
			}
			k := i + int(j.Int64())
			es[i], es[k] = es[k], es[i]
		}
		if err := write(out+"."+strconv.Itoa(b), es[:perBucket]); err != nil {
			return err
		}
	}
	return nil
}

func cmdDNS(ctx context.Context, args []string, stderr io.Writer) error {
	fs := newFlagSet("dns", stderr)
	zone := fs.String("zone", "", "zone to serve, such as b.example.net (required)")
	listen := fs.String("listen", ":53", "address for UDP and TCP")
	var lists, ns, nsAddrs listFlag
	fs.Var(&lists, "list", "list file from \"list sign\" (repeatable: one per audience and bucket; required)")
	fs.Var(&ns, "ns", "name server name for the zone's NS record (repeatable; default ns.ZONE)")
	fs.Var(&nsAddrs, "ns-addr", "address served for in-zone NS names (repeatable)")
	rateLimit := fs.Int("rate-limit", dnsserver.DefaultRateLimit, "UDP responses per second per requester network (/24, /56); negative: no limit")
	slip := fs.Int("slip", dnsserver.DefaultSlip, "answer every Nth rate-limited UDP query with an empty truncated answer (retry over TCP); negative: never")
	logFlags := cmdmain.AddLogFlags(fs, "info")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	if *zone == "" || len(lists) == 0 {
		return errors.New("dns: --zone and --list are required")
	}
	log, err := logFlags.Logger(stderr)
	if err != nil {
		return err
	}
	read := func() ([]dnsserver.Audience, error) {
		var out []dnsserver.Audience
		for _, p := range lists {
			data, err := os.ReadFile(p)
			if err != nil {
				return nil, err
			}
			b, err := relaylist.ParseBundle(data)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", p, err)
			}
			i := slices.IndexFunc(out, func(a dnsserver.Audience) bool { return a.Key == b.Key })
			if i < 0 {
				out = append(out, dnsserver.Audience{Key: b.Key})
				i = len(out) - 1
			}
			out[i].Lists = append(out[i].Lists, b.List)
		}
		return out, nil
	}
	data, err := read()
	if err != nil {
		return fmt.Errorf("dns: %w", err)
	}
	var addrs []netip.Addr
	for _, a := range nsAddrs {
		ip, err := netip.ParseAddr(a)
		if err != nil {
			return fmt.Errorf("dns: --ns-addr: %w", err)
		}
		addrs = append(addrs, ip)
	}
	s, err := dnsserver.New(dnsserver.Config{Zone: *zone, Audiences: data, NS: ns, NSAddrs: addrs,
		RateLimit: *rateLimit, Slip: *slip, Logger: log})
	if err != nil {
		return err
	}
	pc, ln, err := dnsserver.Listen(*listen)
	if err != nil {
		return err
	}
	log.Info("DNS listening", "addr", pc.LocalAddr().String(), "zone", s.Zone())
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				data, err := read()
				if err == nil {
					err = s.SetAudiences(data)
				}
				if err != nil {
					log.Warn("lists not reloaded", "err", err)
				}
			}
		}
	}()
	return s.Serve(ctx, pc, ln)
}
