package relaytest

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"

	"github.com/merpati/merpati/transport/tlscarrier"
)

// CaddyPath is where Debian's caddy package installs Caddy.
const CaddyPath = "/usr/bin/caddy"

// A Caddy is a real web server with HTTP/3, Caddy, running as a child
// process on 127.0.0.1 as a cover site: one port number for TCP (HTTP/1.1
// and HTTP/2) and UDP (HTTP/3), a certificate made for [CoverName] (ECDSA
// P-256, 90 days, self-signed), and a static file server whose index.html
// is [CoverPage], beside a large file ([CaddyLargeFile]). It answers GET
// and HEAD with the page, and other methods with 405, as [Cover] does.
//
// Its configuration keeps it on the machine: the admin endpoint,
// automatic HTTPS (ACME, redirects) and OCSP stapling are off, every
// listener binds 127.0.0.1, and its storage and autosaved configuration
// are in the test's temporary directory. Caddy 2 has no telemetry and no
// update check. [StartCaddy] checks the adapted configuration and, on
// Linux, the sockets of the running process.
type Caddy struct {
	addr string
	logs *Logs
	cert []byte
}

// StartCaddy starts Caddy ([CaddyPath]) and returns once it answers on
// TCP and on QUIC. It stops at the end of the test, whatever the test's
// outcome. Without Caddy installed the test is skipped, or fails if the
// environment variable CI is set.
func StartCaddy(t testing.TB) *Caddy {
	t.Helper()
	if _, err := os.Stat(CaddyPath); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("caddy is not installed (apt-get install caddy): %v", err)
		}
		t.Skipf("caddy is not installed (apt-get install caddy): %v", err)
	}
	dir := t.TempDir()
	c := &Caddy{logs: &Logs{}}
	site := filepath.Join(dir, "site")
	index := filepath.Join(site, "index.html")
	if err := os.Mkdir(site, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(index, []byte(CoverPage), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(index, coverModTime, coverModTime); err != nil {
		t.Fatal(err)
	}
	// A large file, as a real site has (pictures, videos): what a
	// visitor's download looks like on the wire, past the handshake.
	if err := os.WriteFile(filepath.Join(site, strings.TrimPrefix(CaddyLargeFile, "/")), make([]byte, CaddyLargeSize), 0o644); err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	var err error
	if c.cert, err = writeCoverCert(certFile, keyFile); err != nil {
		t.Fatal(err)
	}

	// Another process may take the port between our probe and Caddy's
	// bind; Caddy then exits, and we try another.
	var lastErr error
	for range 5 {
		ln, pc := listenBoth(t)
		c.addr = ln.Addr().String()
		ln.Close()
		pc.Close()
		config := filepath.Join(dir, "Caddyfile")
		if err := os.WriteFile(config, []byte(caddyfile(c.addr, dir, site, certFile, keyFile)), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := checkCaddyConfig(dir, config); err != nil {
			t.Fatal(err)
		}
		if lastErr = c.run(t, dir, config); lastErr == nil {
			return c
		}
		t.Logf("caddy on %s: %v", c.addr, lastErr)
	}
	t.Fatalf("caddy did not start: %v\nlogs:\n%s", lastErr, c.logs)
	return nil
}

// CaddyLargeFile is the path of a file of CaddyLargeSize bytes on Caddy's
// site (beside its index.html).
const (
	CaddyLargeFile = "/large.bin"
	CaddyLargeSize = 2 << 20
)

// Addr returns Caddy's "host:port", on TCP and UDP.
func (c *Caddy) Addr() string { return c.addr }

// Cert returns Caddy's certificate, DER.
func (c *Caddy) Cert() []byte { return c.cert }

// Logs returns what Caddy has logged (JSON lines, debug level) so far.
func (c *Caddy) Logs() string { return c.logs.String() }

// caddyfile returns the configuration of a Caddy serving site on addr.
func caddyfile(addr, dir, site, certFile, keyFile string) string {
	host, port, _ := net.SplitHostPort(addr)
	return fmt.Sprintf(`{
	admin off
	auto_https off
	ocsp_stapling off
	skip_install_trust
	default_sni %[1]s
	storage file_system %[2]q
	servers {
		protocols h1 h2 h3
	}
	log {
		output stderr
		level DEBUG
	}
}

https://:%[3]s {
	bind %[4]s
	tls %[5]q %[6]q
	root * %[7]q
	file_server
}
`, CoverName, filepath.Join(dir, "storage"), port, host, certFile, keyFile, site)
}

// caddyEnv is the environment Caddy runs with: nothing of ours (no
// proxies), and its home, data and configuration directories in dir.
func caddyEnv(dir string) []string {
	return []string{
		"PATH=/usr/bin:/bin",
		"HOME=" + filepath.Join(dir, "home"),
		"XDG_DATA_HOME=" + filepath.Join(dir, "data"),
		"XDG_CONFIG_HOME=" + filepath.Join(dir, "config"),
	}
}

// checkCaddyConfig adapts config to Caddy's JSON and checks that it
// keeps Caddy on the machine: admin endpoint off, automatic HTTPS off,
// OCSP stapling off, and only loopback listeners.
func checkCaddyConfig(dir, config string) error {
	cmd := exec.Command(CaddyPath, "adapt", "--config", config, "--adapter", "caddyfile")
	cmd.Env = caddyEnv(dir)
	out, err := cmd.Output()
	if err != nil {
		return fmt.Errorf("caddy adapt: %w", err)
	}
	var cfg struct {
		Admin struct {
			Disabled bool `json:"disabled"`
		} `json:"admin"`
		Apps struct {
			HTTP struct {
				Servers map[string]struct {
					Listen         []string `json:"listen"`
					AutomaticHTTPS struct {
						Disable bool `json:"disable"`
					} `json:"automatic_https"`
				} `json:"servers"`
			} `json:"http"`
			TLS struct {
				DisableOCSPStapling bool `json:"disable_ocsp_stapling"`
				Automation          struct {
					Policies []struct {
						DisableOCSPStapling bool  `json:"disable_ocsp_stapling"`
						Issuers             []any `json:"issuers"`
					} `json:"policies"`
				} `json:"automation"`
			} `json:"tls"`
		} `json:"apps"`
	}
	if err := json.Unmarshal(out, &cfg); err != nil {
		return fmt.Errorf("caddy adapt: %w", err)
	}
	var bad []string
	if !cfg.Admin.Disabled {
		bad = append(bad, "admin endpoint on")
	}
	if len(cfg.Apps.HTTP.Servers) == 0 {
		bad = append(bad, "no server")
	}
	for name, srv := range cfg.Apps.HTTP.Servers {
		if !srv.AutomaticHTTPS.Disable {
			bad = append(bad, name+": automatic HTTPS on")
		}
		for _, l := range srv.Listen {
			if !strings.HasPrefix(l, "127.0.0.1:") {
				bad = append(bad, name+": listens on "+l)
			}
		}
	}
	if !cfg.Apps.TLS.DisableOCSPStapling {
		bad = append(bad, "OCSP stapling on")
	}
	for _, p := range cfg.Apps.TLS.Automation.Policies {
		if !p.DisableOCSPStapling || len(p.Issuers) > 0 {
			bad = append(bad, "an automation policy staples OCSP or has issuers")
		}
	}
	if len(bad) > 0 {
		return fmt.Errorf("caddy config would reach off the machine: %s\n%s", strings.Join(bad, "; "), out)
	}
	return nil
}

// run starts Caddy with config and waits until it answers on c.addr,
// over TLS and QUIC; if it does not, it stops Caddy and says why. Once
// started, Caddy is stopped at the end of the test.
func (c *Caddy) run(t testing.TB, dir, config string) error {
	cmd := exec.Command(CaddyPath, "run", "--config", config, "--adapter", "caddyfile")
	cmd.Env = caddyEnv(dir)
	cmd.Stdout, cmd.Stderr = c.logs, c.logs
	return runServer(t, "caddy", cmd, c.addr, c.answers)
}

// answers reports whether Caddy completes a TLS handshake on TCP and a
// QUIC handshake on UDP at c.addr.
func (c *Caddy) answers() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	tc, err := (&tls.Dialer{Config: &tls.Config{ServerName: CoverName, InsecureSkipVerify: true}}).DialContext(ctx, "tcp", c.addr)
	if err != nil {
		return err
	}
	tc.Close()
	qc, err := quic.DialAddr(ctx, c.addr, &tls.Config{ServerName: CoverName, InsecureSkipVerify: true, NextProtos: []string{http3.NextProtoH3}}, nil)
	if err != nil {
		return err
	}
	return qc.CloseWithError(quic.ApplicationErrorCode(http3.ErrCodeNoError), "")
}

// checkLoopbackSockets checks, on Linux, that every TCP and UDP socket
// process pid has open is bound to 127.0.0.1 (or unbound, port 0): it
// maps the inodes of /proc/PID/fd to /proc/net's socket tables. Elsewhere
// it does nothing.
func checkLoopbackSockets(pid int) error {
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("caddy's sockets: %w", err)
	}
	inodes := map[string]bool{}
	for _, fd := range fds {
		target, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if inode, ok := strings.CutPrefix(target, "socket:["); err == nil && ok {
			inodes[strings.TrimSuffix(inode, "]")] = true
		}
	}
	found := 0
	for _, table := range []string{"tcp", "tcp6", "udp", "udp6"} {
		f, err := os.Open(fmt.Sprintf("/proc/%d/net/%s", pid, table))
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		sc.Scan() // header
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) < 10 || !inodes[fields[9]] {
				continue
			}
			found++
			local, err := parseProcAddr(fields[1])
			if err != nil {
				f.Close()
				return fmt.Errorf("caddy's sockets: %s: %w", table, err)
			}
			if !local.Addr().IsLoopback() && local.Port() != 0 {
				f.Close()
				return fmt.Errorf("caddy has a %s socket bound to %v", table, local)
			}
		}
		f.Close()
	}
	if found == 0 {
		return errors.New("caddy's sockets: none found in /proc")
	}
	return nil
}

// parseProcAddr parses a /proc/net/{tcp,udp}[6] address, "0100007F:1F90":
// the address as 32-bit words, each printed in hex as a host-order
// number, and the port in hex.
func parseProcAddr(s string) (netip.AddrPort, error) {
	hexAddr, hexPort, ok := strings.Cut(s, ":")
	raw, err := hex.DecodeString(hexAddr)
	if !ok || err != nil || len(raw)%4 != 0 {
		return netip.AddrPort{}, fmt.Errorf("bad address %q", s)
	}
	port, err := strconv.ParseUint(hexPort, 16, 16)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("bad port in %q", s)
	}
	for i := 0; i < len(raw); i += 4 { // each word as the kernel holds it: network order in memory
		binary.NativeEndian.PutUint32(raw[i:], binary.BigEndian.Uint32(raw[i:]))
	}
	addr, _ := netip.AddrFromSlice(raw)
	return netip.AddrPortFrom(addr.Unmap(), uint16(port)), nil
}

// writeCoverCert makes a self-signed ECDSA P-256 certificate for
// CoverName, valid from a day ago for 90 days (a Let's Encrypt
// certificate's span), writes it and its key as PEM, and returns it DER.
func writeCoverCert(certFile, keyFile string) ([]byte, error) {
	now := time.Now()
	certPEM, keyPEM, err := tlscarrier.NewCertificateValid(CoverName, "ECDSA-P256", now.Add(-24*time.Hour), now.Add(89*24*time.Hour))
	if err != nil {
		return nil, fmt.Errorf("cover certificate: %w", err)
	}
	if err := os.WriteFile(certFile, certPEM, 0o644); err != nil {
		return nil, err
	}
	if err := os.WriteFile(keyFile, keyPEM, 0o600); err != nil {
		return nil, err
	}
	block, _ := pem.Decode(certPEM)
	return block.Bytes, nil
}
