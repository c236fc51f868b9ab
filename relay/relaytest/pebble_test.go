package relaytest

import (
	"net"
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// TestPebble starts Pebble and checks what the harness promises: its
// directory answers over HTTPS trusted by Roots (and the roots file), its
// DNS server answers the domain with 127.0.0.1 and nothing else, Root is a
// CA certificate, and Stop stops Pebble.
func TestPebble(t *testing.T) {
	CheckLeaks(t)
	const domain = "site.merpati.test"
	pb := StartPebble(t, PebbleOptions{Domain: domain, TLSPort: 5001})

	c := pb.client()
	defer c.CloseIdleConnections()
	resp, err := c.Get(pb.DirURL)
	if err != nil {
		t.Fatalf("directory: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("directory: %s", resp.Status)
	}
	if b, err := os.ReadFile(pb.RootsFile); err != nil || len(b) == 0 {
		t.Errorf("roots file: %v", err)
	}
	if !pb.Root.IsCA || pb.Root.CheckSignatureFrom(pb.Root) != nil {
		t.Errorf("Root %s is not a self-signed CA certificate", pb.Root.Subject)
	}

	for _, q := range []struct {
		name  string
		qtype uint16
		rcode int
		a     net.IP
	}{
		{domain, dns.TypeA, dns.RcodeSuccess, net.IPv4(127, 0, 0, 1)},
		{"SITE.merpati.test", dns.TypeA, dns.RcodeSuccess, net.IPv4(127, 0, 0, 1)},
		{domain, dns.TypeAAAA, dns.RcodeSuccess, nil},
		{"other.merpati.test", dns.TypeA, dns.RcodeNameError, nil},
	} {
		m := new(dns.Msg)
		m.SetQuestion(dns.Fqdn(q.name), q.qtype)
		in, err := dns.Exchange(m, pb.DNSAddr)
		if err != nil {
			t.Fatalf("DNS %s: %v", q.name, err)
		}
		var got net.IP
		if len(in.Answer) == 1 {
			if a, ok := in.Answer[0].(*dns.A); ok {
				got = a.A
			}
		}
		want := 0
		if q.a != nil {
			want = 1
		}
		if in.Rcode != q.rcode || len(in.Answer) != want || !got.Equal(q.a) {
			t.Errorf("DNS %s %s: rcode %d, answer %v; want rcode %d, %v", q.name, dns.TypeToString[q.qtype], in.Rcode, in.Answer, q.rcode, q.a)
		}
	}

	pb.Stop()
	c.CloseIdleConnections()
	c.Timeout = 5 * time.Second
	if resp, err := c.Get(pb.DirURL); err == nil {
		resp.Body.Close()
		t.Error("the directory still answers after Stop")
	}
}
