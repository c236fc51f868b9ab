package main

// The list and dns commands: the signed bootstrap relay list and the
// authoritative DNS server that publishes it.
//
//	merpati-relay list keygen --out FILE
//	merpati-relay list pub --key FILE
//	merpati-relay list add --in relays.json (--link LINK | --link-file FILE | --dir DIR --name KEYNAME)
//	merpati-relay list sign --key FILE --in relays.json --seq N [--ttl 168h] --out list.bin [--buckets N --per-bucket K]
//	merpati-relay list show --in list.bin [--lk PUBKEY]
//	merpati-relay dns --zone ZONE --list FILE [--list FILE]... [--listen ADDR] [--ns NAME]... [--ns-addr IP]... [--period 24h]
//	                  [--rate-limit 20] [--slip 2]
//
// keygen makes the ed25519 list key (PKCS #8 PEM, mode 0600) and prints
// its public half, the lk= value of share links. Keep it away from relays
// and from the DNS server: whoever holds it can point every client at any
// relay.
//
// relays.json is {"relays": ["merpati://...", ...]}: one share link per
// relay, each with the access key issued for the list's audience (make one
// per relay with "merpati-relay link add"). add appends one, from a link
// or from a relay directory and key name.
//
// sign writes the signed list. With --buckets N it writes N lists,
// FILE.0 ... FILE.N-1, each with --per-bucket relays chosen at random, for
// the DNS server's anti-enumeration buckets.
//
// dns serves the lists under ZONE on UDP and TCP at ADDR (default :53):
// delegate ZONE to this server (NS record at the parent, pointing at a name
// with the server's address, given here as --ns and --ns-addr). SIGHUP
// reloads the list files. UDP answers are rate-limited per requester
// network (--rate-limit per second, default 20; every --slip-th answer over
// it, default the 2nd, is an empty truncated one that sends real resolvers
// to TCP), so the server cannot amplify floods at a spoofed address.

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
		return errors.New("list: want keygen, pub, add, sign or show")
	}
	sub, args := args[0], args[1:]
	fs := newFlagSet("list "+sub, stderr)
	out := fs.String("out", "", "keygen: key file to create; sign: list file to write")
	keyFile := fs.String("key", "", "pub, sign: list key file")
	in := fs.String("in", "", "add, sign: relays.json; show: signed list")
	linkStr := fs.String("link", "", "add: share link of the relay")
	linkFile := fs.String("link-file", "", "add: file holding the share link")
	dir := fs.String("dir", "", "add: relay directory to take the link from")
	name := fs.String("name", "", "add: access key name in --dir")
	seq := fs.Uint64("seq", 0, "sign: sequence number, higher than any list signed before (required)")
	ttl := fs.Duration("ttl", 7*24*time.Hour, "sign: how long clients trust the list")
	buckets := fs.Int("buckets", 0, "sign: write this many bucket lists (FILE.0 ...)")
	perBucket := fs.Int("per-bucket", 2, "sign: relays per bucket list")
	lk := fs.String("lk", "", "show: list public key (base64url) to verify with")
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
	case "add":
		return listAdd(*in, *linkStr, *linkFile, *dir, *name, stdout)
	case "sign":
		return listSign(*keyFile, *in, *out, *seq, *ttl, *buckets, *perBucket, stdout)
	case "show":
		if *in == "" {
			return errors.New("list show: --in is required")
		}
		data, err := os.ReadFile(*in)
		if err != nil {
			return err
		}
		var l *relaylist.List
		if *lk != "" {
			pub, err := base64.RawURLEncoding.DecodeString(*lk)
			if err != nil {
				return fmt.Errorf("list show: --lk: %w", err)
			}
			l, err = relaylist.Decode(data, relaylist.Verify{Key: pub, Now: time.Now()})
			if err != nil {
				return err
			}
			fmt.Fprintln(stdout, "signature: good")
		} else if l, err = relaylist.ParseUnverified(data); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "seq %d, expires %s, %d relays, %d bytes, %d DNS chunks\n",
			l.Seq, l.Expires.Format(time.RFC3339), len(l.Entries), len(data), relaylist.IndexOf(data).Chunks)
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
	l.Bootstrap, l.ListKey = nil, nil
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

func listSign(keyFile, in, out string, seq uint64, ttl time.Duration, buckets, perBucket int, stdout io.Writer) error {
	priv, err := loadListKey(keyFile)
	if err != nil {
		return fmt.Errorf("list sign: %w", err)
	}
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
		if err := atomicfile.Write(path, data, 0o644); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s: seq %d, %d relays, %d bytes, %d DNS chunks, expires %s\n",
			path, seq, len(es), len(data), relaylist.IndexOf(data).Chunks, expires.Format(time.RFC3339))
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
	fs.Var(&lists, "list", "signed list file (repeatable: one per bucket; required)")
	fs.Var(&ns, "ns", "name server name for the zone's NS record (repeatable; default ns.ZONE)")
	fs.Var(&nsAddrs, "ns-addr", "address served for in-zone NS names (repeatable)")
	period := fs.Duration("period", 24*time.Hour, "how long a network stays in one bucket")
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
	read := func() ([][]byte, error) {
		var out [][]byte
		for _, p := range lists {
			data, err := os.ReadFile(p)
			if err != nil {
				return nil, err
			}
			out = append(out, data)
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
	s, err := dnsserver.New(dnsserver.Config{Zone: *zone, Lists: data, NS: ns, NSAddrs: addrs, Period: *period,
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
					err = s.SetLists(data)
				}
				if err != nil {
					log.Warn("lists not reloaded", "err", err)
				}
			}
		}
	}()
	return s.Serve(ctx, pc, ln)
}
