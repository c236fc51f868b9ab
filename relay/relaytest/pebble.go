package relaytest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// PebblePath is where Debian's pebble package installs Pebble, Let's
// Encrypt's ACME test server.
const PebblePath = "/usr/bin/pebble"

// PebbleOptions configure [StartPebble].
type PebbleOptions struct {
	// Domain is the name certificates are asked for: the test's DNS
	// server, which Pebble resolves names with, answers it with
	// 127.0.0.1, and nothing else. Required.
	Domain string
	// TLSPort is the port Pebble connects to, at Domain, to check a
	// TLS-ALPN-01 challenge (a real CA's is 443): the port of the relay's
	// front door, or of whatever stands for it. Required.
	TLSPort int
}

// A Pebble is Pebble ([PebblePath]) running as a child process on
// 127.0.0.1 with a DNS server of the test's: an ACME CA that checks
// TLS-ALPN-01 challenges for real (no authorization reuse, none always
// valid) at Domain:TLSPort, and issues certificates under a root it makes
// anew at each start. Its HTTP-01 port is a free one nobody listens on.
type Pebble struct {
	// DirURL is the URL of its ACME directory (selfsite's Config.CA,
	// relay.json's acme_ca).
	DirURL string
	// RootsFile is a PEM file of the certificate of Pebble's own HTTPS
	// listeners, which the ACME client must trust for DirURL (relay.json's
	// acme_roots). Debian's package ships none: it is made for the test.
	RootsFile string
	// Roots holds the certificate of RootsFile (selfsite's
	// Config.CARoots).
	Roots *x509.CertPool
	// Root is the root the certificates Pebble issues chain up to (from
	// its management interface's /roots/0), to verify them with.
	Root *x509.Certificate
	// DNSAddr is the "host:port" of the DNS server Pebble resolves names
	// with (UDP and TCP).
	DNSAddr string
	// Logs is what Pebble has written to its standard output and error.
	Logs *Logs

	stop func()
}

// StartPebble starts Pebble and the DNS server it resolves names with, and
// returns once Pebble's directory answers. Both stop at the end of the
// test, or Pebble earlier with [Pebble.Stop]. Without Pebble installed the
// test is skipped, or fails if the environment variable CI is set.
func StartPebble(t testing.TB, opts PebbleOptions) *Pebble {
	t.Helper()
	if _, err := os.Stat(PebblePath); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("pebble is not installed (apt-get install pebble): %v", err)
		}
		t.Skipf("pebble is not installed (apt-get install pebble): %v", err)
	}
	if opts.Domain == "" || opts.TLSPort <= 0 || opts.TLSPort > 65535 {
		t.Fatalf("relaytest: StartPebble: Domain and TLSPort are required (got %q, %d)", opts.Domain, opts.TLSPort)
	}
	dir := t.TempDir()
	dnsAddr := startDNS(t, opts.Domain)
	certFile, keyFile, roots := writeListenerCert(t, dir)
	var lastErr error
	// Another process may take a port between our probe and Pebble's
	// bind; Pebble then exits, and we try others.
	for range 5 {
		ports := freePorts(t, 3)
		config := map[string]any{"pebble": map[string]any{
			"listenAddress":                  fmt.Sprintf("127.0.0.1:%d", ports[0]),
			"managementListenAddress":        fmt.Sprintf("127.0.0.1:%d", ports[1]),
			"certificate":                    certFile,
			"privateKey":                     keyFile,
			"httpPort":                       ports[2],
			"tlsPort":                        opts.TLSPort,
			"ocspResponderURL":               "",
			"externalAccountBindingRequired": false,
		}}
		data, err := json.Marshal(config)
		if err != nil {
			t.Fatal(err)
		}
		configFile := filepath.Join(dir, "pebble.json")
		if err := os.WriteFile(configFile, data, 0o600); err != nil {
			t.Fatal(err)
		}
		pb := &Pebble{
			DirURL:    fmt.Sprintf("https://127.0.0.1:%d/dir", ports[0]),
			RootsFile: certFile,
			Roots:     roots,
			DNSAddr:   dnsAddr,
			Logs:      &Logs{},
		}
		mgmt := fmt.Sprintf("https://127.0.0.1:%d", ports[1])
		cmd := exec.Command(PebblePath, "-config", configFile, "-dnsserver", dnsAddr)
		cmd.Dir = dir
		// No always-valid or authorization reuse: the challenge must
		// really be answered.
		cmd.Env = []string{"PATH=/usr/bin:/bin", "HOME=" + dir,
			"PEBBLE_VA_NOSLEEP=1", "PEBBLE_WFE_NONCEREJECT=0", "PEBBLE_AUTHZREUSE=0"}
		cmd.Stdout, cmd.Stderr = pb.Logs, pb.Logs
		exited, stop, err := startChild(cmd)
		if err != nil {
			t.Fatalf("start pebble: %v", err)
		}
		pb.stop = stop
		if lastErr = pb.waitReady(exited); lastErr == nil {
			if pb.Root, lastErr = pb.fetchRoot(mgmt); lastErr == nil {
				t.Cleanup(pb.stop)
				return pb
			}
		}
		pb.stop()
		t.Logf("pebble: %v\n%s", lastErr, pb.Logs.String())
	}
	t.Fatalf("pebble did not start: %v", lastErr)
	return nil
}

// Stop stops Pebble and returns once it has exited; the DNS server runs
// on until the end of the test. Calling it again does nothing.
func (pb *Pebble) Stop() { pb.stop() }

// client returns an HTTPS client that trusts Pebble's listeners.
func (pb *Pebble) client() *http.Client {
	return &http.Client{
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pb.Roots}},
		Timeout:   5 * time.Second,
	}
}

// waitReady waits, for up to 30 seconds, for Pebble's directory to answer.
func (pb *Pebble) waitReady(exited <-chan error) error {
	c := pb.client()
	defer c.CloseIdleConnections()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		select {
		case err := <-exited:
			return fmt.Errorf("pebble exited: %v", err)
		default:
		}
		resp, err := c.Get(pb.DirURL)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = errors.New(resp.Status)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("pebble does not answer: %w", err)
		}
	}
}

// fetchRoot fetches the root Pebble issues under from its management
// interface at mgmt.
func (pb *Pebble) fetchRoot(mgmt string) (*x509.Certificate, error) {
	c := pb.client()
	defer c.CloseIdleConnections()
	resp, err := c.Get(mgmt + "/roots/0")
	if err != nil {
		return nil, fmt.Errorf("pebble root: %w", err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("pebble root: %w", err)
	}
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, fmt.Errorf("pebble root: no PEM in %q", data)
	}
	return x509.ParseCertificate(block.Bytes)
}

// startDNS starts a DNS server on 127.0.0.1 (UDP and TCP, one port) that
// answers A queries for domain with 127.0.0.1, other queries for domain
// with no record, and every other name with NXDOMAIN; it returns its
// address. It stops at the end of the test.
func startDNS(t testing.TB, domain string) string {
	t.Helper()
	fqdn := dns.Fqdn(domain)
	handler := dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(q)
		m.Authoritative = true
		if len(q.Question) != 1 || !strings.EqualFold(q.Question[0].Name, fqdn) {
			m.Rcode = dns.RcodeNameError
		} else if q.Question[0].Qtype == dns.TypeA {
			m.Answer = []dns.RR{&dns.A{
				Hdr: dns.RR_Header{Name: q.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60},
				A:   net.IPv4(127, 0, 0, 1),
			}}
		}
		w.WriteMsg(m)
	})
	ln, pc := listenBoth(t)
	servers := []*dns.Server{{PacketConn: pc, Handler: handler}, {Listener: ln, Handler: handler}}
	var wg sync.WaitGroup
	for _, s := range servers {
		started := make(chan struct{})
		s.NotifyStartedFunc = func() { close(started) }
		wg.Go(func() { s.ActivateAndServe() })
		<-started
	}
	t.Cleanup(func() {
		for _, s := range servers {
			s.Shutdown()
		}
		wg.Wait()
	})
	return ln.Addr().String()
}

// writeListenerCert writes into dir a self-signed certificate, and its
// key, for Pebble's HTTPS listeners on 127.0.0.1, and returns the files
// and the pool that trusts it.
func writeListenerCert(t testing.TB, dir string) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "pebble test listener"},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "pebble-cert.pem"), filepath.Join(dir, "pebble-key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}

// freePorts returns n TCP ports of 127.0.0.1 free a moment ago.
func freePorts(t testing.TB, n int) []int {
	t.Helper()
	var ports []int
	var lns []net.Listener
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		lns = append(lns, ln)
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	for _, ln := range lns {
		ln.Close()
	}
	return ports
}

// FreeAddr returns a "127.0.0.1:port" free on TCP and on UDP a moment ago:
// for a relay that binds it itself, on both, such as one [StartPebble]
// must know the port of first.
func FreeAddr(t testing.TB) string {
	t.Helper()
	ln, pc := listenBoth(t)
	addr := ln.Addr().String()
	ln.Close()
	pc.Close()
	return addr
}
