// Command merpati-lab plays the rest of the world for merpati's demo
// (scripts/demo.sh), on loopback only: a test Telegram datacenter, a cover
// web site, and a real MTProto client that goes through a SOCKS5 proxy.
//
// Usage:
//
//	merpati-lab dc [--listen 127.0.0.1:0] [--id 2] [--addr-file FILE] --key-file FILE
//	merpati-lab cover [--listen 127.0.0.1:0] [--name cover.merpati.test] [--addr-file FILE] [--no-http3]
//	merpati-lab mtproto --socks ADDR --dc-addr ADDR --dc-key FILE [--id 2] [--rpcs 100] [--timeout 30s]
//	merpati-lab freeport
//
// dc serves a gotd tgtest datacenter (see package telegramtest) until
// interrupted. It writes its public RSA key as PEM to --key-file and, once
// it accepts connections, its address to --addr-file (the file appears
// only when complete, so a script can wait for it), and prints both.
//
// cover serves an HTTPS site with a fresh self-signed certificate for
// --name, standing in for a relay operator's cover site; --addr-file as
// for dc.
//
// mtproto runs a real gotd telegram.Client through the SOCKS5 proxy at
// --socks to the DC at --dc-addr whose key is in --dc-key: a fresh MTProto
// auth key exchange, initConnection, then --rpcs echo RPCs, printing the
// timings.
//
// freeport prints a TCP port on 127.0.0.1 that was free a moment ago, for
// programs that must know their port before they start.
//
// Every address given must be a loopback IP literal.
package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/netip"
	"os"
	"time"

	"golang.org/x/net/proxy"

	"github.com/merpati/merpati/client/internal/telegramtest"
	"github.com/merpati/merpati/relay/relaytest/coversite"
	"github.com/merpati/merpati/transport/atomicfile"
	"github.com/merpati/merpati/transport/cmdmain"
)

func main() { os.Exit(cmdmain.Main("merpati-lab", run)) }

const usage = `usage:
  merpati-lab dc [--listen 127.0.0.1:0] [--id 2] [--addr-file FILE] --key-file FILE
  merpati-lab cover [--listen 127.0.0.1:0] [--name cover.merpati.test] [--addr-file FILE] [--no-http3]
  merpati-lab mtproto --socks ADDR --dc-addr ADDR --dc-key FILE [--id 2] [--rpcs 100]
  merpati-lab freeport`

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprintln(stderr, usage)
		return flag.ErrHelp
	}
	rest := args[1:]
	switch args[0] {
	case "dc":
		return cmdDC(ctx, rest, stdout, stderr)
	case "cover":
		return cmdCover(ctx, rest, stdout, stderr)
	case "mtproto":
		return cmdMTProto(ctx, rest, stdout, stderr)
	case "freeport":
		return cmdFreePort(stdout)
	case "-h", "-help", "--help", "help":
		fmt.Fprintln(stdout, usage)
		return nil
	}
	fmt.Fprintln(stderr, usage)
	return fmt.Errorf("unknown command %q", args[0])
}

func newFlagSet(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("merpati-lab "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

// checkLoopback refuses addresses that are not a loopback IP and port: the
// lab never listens on, or dials, anything else.
func checkLoopback(flagName, addr string) error {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil || !ap.Addr().IsLoopback() {
		return fmt.Errorf("--%s %q: want a loopback IP and port, such as 127.0.0.1:0", flagName, addr)
	}
	return nil
}

func cmdDC(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("dc", stderr)
	listen := fs.String("listen", "127.0.0.1:0", "loopback address to listen on")
	id := fs.Int("id", 2, "datacenter number")
	addrFile := fs.String("addr-file", "", "write the listening address here once serving")
	keyFile := fs.String("key-file", "", "write the DC's public RSA key (PEM) here (required)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *keyFile == "" {
		return errors.New("dc: --key-file is required")
	}
	if err := checkLoopback("listen", *listen); err != nil {
		return err
	}
	dc, err := telegramtest.ListenDC(ctx, *id, *listen)
	if err != nil {
		return err
	}
	defer dc.Close()
	if err := atomicfile.Write(*keyFile, dc.PublicKeyPEM(), 0o600); err != nil {
		return fmt.Errorf("dc: write key: %w", err)
	}
	if *addrFile != "" {
		if err := atomicfile.Write(*addrFile, []byte(dc.Addr+"\n"), 0o600); err != nil {
			return fmt.Errorf("dc: write address: %w", err)
		}
	}
	fmt.Fprintf(stdout, "test DC %d serving MTProto on %s\nRSA key fingerprint %016x, public key in %s\n",
		dc.ID, dc.Addr, uint64(dc.Fingerprint()), *keyFile)
	<-ctx.Done()
	return nil
}

// coverPage is what the lab's cover site serves.
const coverPage = `<!doctype html>
<html><head><title>Merpati lab cover site</title></head>
<body><h1>Just an ordinary web site</h1><p>Nothing to see here.</p></body></html>
`

func cmdCover(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("cover", stderr)
	listen := fs.String("listen", "127.0.0.1:0", "loopback address to listen on")
	name := fs.String("name", "cover.merpati.test", "server name in the site's certificate")
	addrFile := fs.String("addr-file", "", "write the listening address here once serving")
	noHTTP3 := fs.Bool("no-http3", false, "serve no HTTP/3 (leave the UDP port closed)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := checkLoopback("listen", *listen); err != nil {
		return err
	}
	cert, err := selfSigned(*name)
	if err != nil {
		return err
	}
	ln, pc, err := coversite.Listen(ctx, *listen, *noHTTP3)
	if err != nil {
		return fmt.Errorf("cover: %w", err)
	}
	if *addrFile != "" {
		if err := atomicfile.Write(*addrFile, []byte(ln.Addr().String()+"\n"), 0o600); err != nil {
			ln.Close()
			if pc != nil {
				pc.Close()
			}
			return fmt.Errorf("cover: write address: %w", err)
		}
	}
	h3 := "and HTTP/3 on UDP"
	if pc == nil {
		h3 = "without HTTP/3"
	}
	fmt.Fprintf(stdout, "cover site https://%s/ %s (certificate for %s)\n", ln.Addr(), h3, *name)
	return coversite.Serve(ctx, ln, pc, cert, coversite.Handler(coverPage))
}

// selfSigned makes an ECDSA certificate for name, valid for a day.
func selfSigned(name string) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		return tls.Certificate{}, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: name, Organization: []string{"Merpati lab"}},
		DNSNames:              []string{name},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("cover: certificate: %w", err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

func cmdMTProto(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("mtproto", stderr)
	socks := fs.String("socks", "", "SOCKS5 proxy address (required)")
	dcAddr := fs.String("dc-addr", "", "the DC's address (required)")
	dcKey := fs.String("dc-key", "", "file with the DC's public RSA key, PEM (required)")
	id := fs.Int("id", 2, "the DC's datacenter number")
	rpcs := fs.Int("rpcs", 100, "number of echo RPCs")
	timeout := fs.Duration("timeout", 30*time.Second, "give up after this long")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *socks == "" || *dcAddr == "" || *dcKey == "" {
		return errors.New("mtproto: --socks, --dc-addr and --dc-key are required")
	}
	for f, a := range map[string]string{"socks": *socks, "dc-addr": *dcAddr} {
		if err := checkLoopback(f, a); err != nil {
			return err
		}
	}
	pemData, err := os.ReadFile(*dcKey)
	if err != nil {
		return err
	}
	key, err := telegramtest.ParsePublicKeyPEM(pemData)
	if err != nil {
		return err
	}
	dc, err := telegramtest.RemoteDC(*id, *dcAddr, key)
	if err != nil {
		return err
	}
	d, err := proxy.SOCKS5("tcp", *socks, nil, proxy.Direct)
	if err != nil {
		return err
	}
	dial := d.(proxy.ContextDialer).DialContext

	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	fmt.Fprintf(stdout, "gotd client: DC %d at %s via SOCKS5 %s, %d RPCs\n", *id, *dcAddr, *socks, *rpcs)
	st, err := telegramtest.Run(ctx, dc, dial, *rpcs)
	if st.KeyExchange > 0 {
		fmt.Fprintf(stdout, "MTProto auth key exchange done in %v (SOCKS5 + stream open + DH exchange)\n", st.KeyExchange.Round(time.Microsecond))
	}
	if err != nil {
		return err
	}
	rpcTime := st.Total - st.KeyExchange
	fmt.Fprintf(stdout, "first RPC round trip %v\n", st.FirstRPC.Round(time.Microsecond))
	fmt.Fprintf(stdout, "%d echo RPCs (16 B to 24 KiB payloads) answered correctly; session %v, of which %v after the key exchange (%v per RPC incl. initConnection)\n",
		st.RPCs, st.Total.Round(time.Millisecond), rpcTime.Round(time.Millisecond), (rpcTime / time.Duration(max(st.RPCs, 1))).Round(time.Microsecond))
	return nil
}

func cmdFreePort(stdout io.Writer) error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer ln.Close()
	fmt.Fprintln(stdout, ln.Addr().(*net.TCPAddr).Port)
	return nil
}
