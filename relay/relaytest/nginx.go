package relaytest

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// NginxPath is where Debian's nginx packages (nginx, nginx-light) install
// nginx.
const NginxPath = "/usr/sbin/nginx"

// Sizes of the certificates an [Nginx] serves, DER: those of the cover
// site measured in issue 14 (an RSA-2048 leaf under an RSA-2048
// intermediate, as Let's Encrypt's R1x are).
const (
	NginxLeafLen         = 1019
	NginxIntermediateLen = 1267
)

// An Nginx is a real web server, Debian's nginx (1.22, OpenSSL 3), running
// as a child process on 127.0.0.1 as a cover site: TLS 1.2 and 1.3, HTTP/2
// and HTTP/1.1 on TCP (no HTTP/3: Debian's nginx 1.22 has none), session
// tickets on (nginx's default), and a static file server whose index.html
// is [CoverPage]. It serves a chain as a real site does: a leaf for
// [CoverName] ([NginxLeafLen] bytes, RSA-2048) and the intermediate that
// signed it ([NginxIntermediateLen] bytes, RSA-2048), under a root of its
// own that it does not send.
//
// Its configuration keeps it on the machine and in the test's temporary
// directory: one listener on 127.0.0.1, no daemon, and its pid file, lock
// file, error log and temporary files there; the access log is off.
// [StartNginx] checks, on Linux, the sockets of the running process.
type Nginx struct {
	addr  string
	dir   string
	logs  *Logs
	chain [][]byte
	root  *x509.Certificate
}

// StartNginx starts nginx ([NginxPath]) and returns once it completes a
// TLS handshake. It stops at the end of the test, whatever the test's
// outcome. Without nginx installed the test is skipped, or fails if the
// environment variable CI is set.
func StartNginx(t testing.TB) *Nginx {
	t.Helper()
	return StartNginxWith(t, NginxOptions{})
}

// NginxOptions change an [Nginx]'s configuration.
type NginxOptions struct {
	// KeepaliveTimeout, if positive, is nginx's keepalive_timeout: how
	// long it keeps an idle connection open, HTTP/2 ones included. Zero
	// leaves nginx's default, 75 s.
	KeepaliveTimeout time.Duration
}

// StartNginxWith is [StartNginx] with options.
func StartNginxWith(t testing.TB, o NginxOptions) *Nginx {
	t.Helper()
	if _, err := os.Stat(NginxPath); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("nginx is not installed (apt-get install nginx-light): %v", err)
		}
		t.Skipf("nginx is not installed (apt-get install nginx-light): %v", err)
	}
	dir := t.TempDir()
	n := &Nginx{dir: dir, logs: &Logs{}}
	site := filepath.Join(dir, "site")
	index := filepath.Join(site, "index.html")
	for _, d := range []string{site, filepath.Join(dir, "tmp")} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(index, []byte(CoverPage), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(index, coverModTime, coverModTime); err != nil {
		t.Fatal(err)
	}
	chainFile, keyFile := filepath.Join(dir, "chain.pem"), filepath.Join(dir, "key.pem")
	var err error
	if n.chain, n.root, err = writeNginxChain(chainFile, keyFile); err != nil {
		t.Fatal(err)
	}

	// Another process may take the port between our probe and nginx's
	// bind; nginx then exits, and we try another.
	var lastErr error
	for range 5 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		n.addr = ln.Addr().String()
		ln.Close()
		config := filepath.Join(dir, "nginx.conf")
		conf := nginxConf(n.addr, dir, site, chainFile, keyFile, os.Geteuid() == 0)
		if o.KeepaliveTimeout > 0 {
			conf = strings.Replace(conf, "http {\n", fmt.Sprintf("http {\n\tkeepalive_timeout %dms;\n", o.KeepaliveTimeout.Milliseconds()), 1)
		}
		if err := os.WriteFile(config, []byte(conf), 0o644); err != nil {
			t.Fatal(err)
		}
		if lastErr = n.run(t, config); lastErr == nil {
			return n
		}
		t.Logf("nginx on %s: %v", n.addr, lastErr)
	}
	t.Fatalf("nginx did not start: %v\nlogs:\n%s", lastErr, n.Logs())
	return nil
}

// Addr returns nginx's "host:port" (TCP).
func (n *Nginx) Addr() string { return n.addr }

// Chain returns the certificate chain nginx sends, leaf first, DER.
func (n *Nginx) Chain() [][]byte { return n.chain }

// Roots returns a pool holding the root that nginx's chain leads to.
func (n *Nginx) Roots() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(n.root)
	return p
}

// Logs returns what nginx has written to its standard output and error
// and to its error log so far.
func (n *Nginx) Logs() string {
	b, _ := os.ReadFile(filepath.Join(n.dir, "error.log"))
	return n.logs.String() + string(b)
}

// nginxConf returns the configuration of an nginx serving site on addr
// with the chain and key in chainFile and keyFile, with every file it
// writes in dir. As root, its worker runs as root too: the test's
// temporary directory is not readable by nginx's default user, nobody.
func nginxConf(addr, dir, site, chainFile, keyFile string, root bool) string {
	user := ""
	if root {
		user = "user root root;\n"
	}
	tmp := filepath.Join(dir, "tmp")
	return fmt.Sprintf(`# merpati test cover site: loopback only, every file in the test's directory
daemon off;
master_process on;
worker_processes 1;
%[1]spid %[2]q;
lock_file %[3]q;
error_log %[4]q info;

events {
	worker_connections 256;
}

http {
	access_log off;
	client_body_temp_path %[5]q;
	proxy_temp_path %[6]q;
	fastcgi_temp_path %[7]q;
	uwsgi_temp_path %[8]q;
	scgi_temp_path %[9]q;
	types {
		text/html html;
	}
	default_type application/octet-stream;

	server {
		listen %[10]s ssl http2;
		server_name %[11]s;
		ssl_certificate %[12]q;
		ssl_certificate_key %[13]q;
		ssl_protocols TLSv1.2 TLSv1.3;
		ssl_session_tickets on;
		root %[14]q;
		index index.html;
	}
}
`, user, filepath.Join(dir, "nginx.pid"), filepath.Join(dir, "nginx.lock"), filepath.Join(dir, "error.log"),
		filepath.Join(tmp, "body"), filepath.Join(tmp, "proxy"), filepath.Join(tmp, "fastcgi"),
		filepath.Join(tmp, "uwsgi"), filepath.Join(tmp, "scgi"),
		addr, CoverName, chainFile, keyFile, site)
}

// run checks config (nginx -t), starts nginx with it and waits until it
// answers on n.addr; if it does not, it stops nginx and says why. Once
// started, nginx is stopped at the end of the test.
func (n *Nginx) run(t testing.TB, config string) error {
	args := []string{"-p", n.dir, "-c", config, "-e", filepath.Join(n.dir, "error.log")}
	check := exec.Command(NginxPath, append(args, "-t")...)
	check.Env = []string{"PATH=/usr/sbin:/usr/bin:/bin"}
	if out, err := check.CombinedOutput(); err != nil {
		t.Fatalf("nginx -t: %v\n%s", err, out)
	}
	cmd := exec.Command(NginxPath, args...)
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/bin"}
	cmd.Stdout, cmd.Stderr = n.logs, n.logs
	// SIGTERM: the master stops its worker at once and exits.
	return runServer(t, "nginx", cmd, n.addr, n.answers)
}

// answers reports whether nginx completes a TLS handshake at n.addr with
// a chain that verifies for CoverName.
func (n *Nginx) answers() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	tc, err := (&tls.Dialer{Config: &tls.Config{ServerName: CoverName, RootCAs: n.Roots()}}).DialContext(ctx, "tcp", n.addr)
	if err != nil {
		return err
	}
	return tc.Close()
}

// writeNginxChain makes a root CA, an intermediate of
// [NginxIntermediateLen] bytes and a leaf for CoverName of [NginxLeafLen]
// bytes, all RSA-2048, writes the leaf and the intermediate (the chain a
// server sends) to chainFile and the leaf's key to keyFile, as PEM, and
// returns the chain, DER, and the root.
func writeNginxChain(chainFile, keyFile string) (chain [][]byte, root *x509.Certificate, err error) {
	var keys [3]*rsa.PrivateKey
	for i := range keys {
		if keys[i], err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
			return nil, nil, err
		}
	}
	// CA/Browser Forum's domain-validated policy, as Let's Encrypt's
	// certificates carry.
	dvPolicy, err := x509.ParseOID("2.23.140.1.2.1")
	if err != nil {
		return nil, nil, err
	}
	now := time.Now()
	rootTmpl := &x509.Certificate{
		Subject:               pkix.Name{Country: []string{"XX"}, Organization: []string{"Merpati Test"}, CommonName: "Merpati Test Root X1"},
		NotBefore:             now.AddDate(-5, 0, 0),
		NotAfter:              now.AddDate(20, 0, 0),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	rootDER, err := sizedCert(rootTmpl, nil, keys[0], keys[0], 0)
	if err != nil {
		return nil, nil, fmt.Errorf("root: %w", err)
	}
	if root, err = x509.ParseCertificate(rootDER); err != nil {
		return nil, nil, err
	}
	// Shaped like Let's Encrypt's intermediates: policies, CRL and
	// issuer URLs (under .test, never fetched), path length 0.
	interTmpl := &x509.Certificate{
		Subject:               pkix.Name{Country: []string{"XX"}, Organization: []string{"Merpati Test"}, CommonName: "R10"},
		NotBefore:             now.AddDate(-1, 0, 0),
		NotAfter:              now.AddDate(2, 0, 0),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
		IssuingCertificateURL: []string{"http://x1.i.merpati.test/"},
		Policies:              []x509.OID{dvPolicy},
	}
	interDER, err := sizedCert(interTmpl, root, keys[1], keys[0], NginxIntermediateLen)
	if err != nil {
		return nil, nil, fmt.Errorf("intermediate: %w", err)
	}
	inter, err := x509.ParseCertificate(interDER)
	if err != nil {
		return nil, nil, err
	}
	leafTmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: CoverName},
		DNSNames:              []string{CoverName},
		NotBefore:             now.Add(-24 * time.Hour),
		NotAfter:              now.Add(89 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IssuingCertificateURL: []string{"http://r10.i.merpati.test/"},
		Policies:              []x509.OID{dvPolicy},
	}
	leafDER, err := sizedCert(leafTmpl, inter, keys[2], keys[1], NginxLeafLen)
	if err != nil {
		return nil, nil, fmt.Errorf("leaf: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(keys[2])
	if err != nil {
		return nil, nil, err
	}
	chain = [][]byte{leafDER, interDER}
	var pemChain []byte
	for _, c := range chain {
		pemChain = append(pemChain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c})...)
	}
	if err := os.WriteFile(chainFile, pemChain, 0o644); err != nil {
		return nil, nil, err
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return nil, nil, err
	}
	return chain, root, nil
}

// sizedCert signs tmpl for key's public half, with signer, parent's key
// (nil parent: self-signed by key), with a serial number of 16 bytes and, when want is
// not 0, a CRL distribution point whose URL is as long as it takes to
// make the DER want bytes long. RSA signatures have a fixed length, so
// the length follows from the template alone.
func sizedCert(tmpl, parent *x509.Certificate, key *rsa.PrivateKey, signer crypto.Signer, want int) ([]byte, error) {
	t := *tmpl
	// 2^126 + a random 126-bit number: 127 bits, 16 bytes in DER.
	r, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 126))
	if err != nil {
		return nil, err
	}
	t.SerialNumber = r.Add(r, new(big.Int).Lsh(big.NewInt(1), 126))
	if parent == nil {
		parent = &t
	}
	build := func(pad int) ([]byte, error) {
		if want != 0 {
			t.CRLDistributionPoints = []string{"http://c.merpati.test/" + strings.Repeat("c", pad) + ".crl"}
		}
		return x509.CreateCertificate(rand.Reader, &t, parent, &key.PublicKey, signer)
	}
	der, err := build(0)
	if err != nil || want == 0 {
		return der, err
	}
	pad := 0
	for range 8 {
		if len(der) == want {
			return der, nil
		}
		// A length crossing 128 or 256 costs a byte more of framing:
		// the next try corrects it.
		if pad += want - len(der); pad < 0 {
			return nil, fmt.Errorf("a certificate of %d bytes is longer than %d", len(der), want)
		}
		if der, err = build(pad); err != nil {
			return nil, err
		}
	}
	return nil, errors.New("no certificate of the length wanted came out")
}
