package censorlab_test

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/merpati/merpati/client/internal/censorlab"
	"github.com/merpati/merpati/transport/link"
	"github.com/merpati/merpati/transport/relaylist"
)

// bootCapture is what the censor saw of one bootstrap: the DNS packets
// on the client's link.
type bootCapture struct {
	pcap   string
	names  []string            // query names, in order
	txt    map[string][]string // TXT strings of each answered name
	qsizes []int               // frame sizes of queries
	asizes []int               // frame sizes of answers
}

// captureRefresh runs "merpati refresh" with lk in the client host over
// resolver, with tshark capturing port 53 on the client's link (as the
// censor would), and returns what was captured.
func captureRefresh(t *testing.T, lab *censorlab.Lab, name string, lk *link.Link, resolver string) *bootCapture {
	t.Helper()
	tshark := needTool(t, "tshark")
	pcap := filepath.Join(lab.Dir, name+".pcap")
	p, err := lab.Start(censorlab.Client, name+"-tshark", tshark, "-i", "censor0", "-f", "port 53", "-w", pcap)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	for !strings.Contains(p.Output(), "Capturing on") {
		select {
		case <-ctx.Done():
			t.Fatalf("tshark did not start:\n%s", p.Output())
		case <-p.Done():
			t.Fatalf("tshark exited: %v\n%s", p.Err(), p.Output())
		case <-time.After(50 * time.Millisecond):
		}
	}
	// "Capturing on" can come before the capture filter is in place.
	time.Sleep(time.Second)
	out, err := lab.Run(ctx, censorlab.Client, lab.Bins().Merpati, "refresh", "--link", lk.String(),
		"--resolvers", resolver, "--config-dir", filepath.Join(lab.Dir, name+"-config"))
	if err != nil {
		t.Fatalf("refresh: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), relayAddr(censorlab.Relay2Addr)) {
		t.Fatalf("refresh did not learn relay2:\n%s", out)
	}
	time.Sleep(500 * time.Millisecond) // let tshark write the last packets
	p.Stop()

	fields, err := exec.CommandContext(ctx, tshark, "-r", pcap, "-Y", "dns", "-T", "fields", "-E", "separator=/t",
		"-e", "frame.len", "-e", "dns.flags.response", "-e", "dns.qry.name", "-e", "dns.txt").Output()
	if err != nil {
		t.Fatalf("tshark -r: %v", err)
	}
	c := &bootCapture{pcap: pcap, txt: map[string][]string{}}
	for line := range strings.Lines(string(fields)) {
		f := strings.Split(strings.TrimRight(line, "\n"), "\t")
		if len(f) < 3 {
			continue
		}
		size, _ := strconv.Atoi(f[0])
		qname := strings.ToLower(f[2])
		if f[1] == "0" || f[1] == "False" {
			c.names = append(c.names, qname)
			c.qsizes = append(c.qsizes, size)
			continue
		}
		c.asizes = append(c.asizes, size)
		if len(f) > 3 && f[3] != "" {
			c.txt[qname] = strings.Split(f[3], ",")
		}
	}
	if len(c.names) < 2 || len(c.txt) < 2 {
		t.Fatalf("%s: captured %d queries and %d TXT answers, want several:\n%s", name, len(c.names), len(c.txt), fields)
	}
	t.Logf("%s over %s: %d queries of %v bytes, answers of %v bytes", name, resolver, len(c.names), c.qsizes, c.asizes)
	return c
}

func needTool(t *testing.T, tool string) string {
	t.Helper()
	p, err := exec.LookPath(tool)
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s is not installed; scripts/test.sh installs it", tool)
		}
		t.Skipf("%s is not installed", tool)
	}
	return p
}

// TestBootstrapCapture captures, at the censor's position, the
// bootstraps of two audiences over plain DNS (UDP, and TCP for the
// second), and checks what the censor learns: no query name, TXT string
// or sequence of sizes repeats across the audiences; nothing of the old
// format (the _n index, "v=merpati1", the list's magic) is on the wire;
// every answer fits 512 bytes; the captured answers open only with their
// own audience's key; and nDPI's ndpiReader raises no risk on any flow.
// (Two periods are compared in client/bootstrap's TestWireNoRepeats,
// where the clock can be moved.)
func TestBootstrapCapture(t *testing.T) {
	lab, svc := newLab(t)
	links := publish(t, lab, svc, 2)
	caps := []*bootCapture{
		captureRefresh(t, lab, "audience0", links[0], "udp://"+censorlab.DNSAddr+":53"),
		captureRefresh(t, lab, "audience1", links[1], "udp://"+censorlab.DNSAddr+":53"),
		captureRefresh(t, lab, "audience1-tcp", links[1], "tcp://"+censorlab.DNSAddr+":53"),
	}
	for i, c := range caps[:2] {
		o := caps[1-i]
		for _, n := range c.names {
			if slices.Contains(o.names, n) {
				t.Errorf("query name %s asked by both audiences", n)
			}
			if !strings.HasSuffix(n, "."+bootZone) || strings.ContainsAny(strings.TrimSuffix(n, "."+bootZone), "_.0123456789") {
				t.Errorf("query name %s: not one word-like label under the zone", n)
			}
		}
		for n, txt := range c.txt {
			for _, s := range txt {
				for _, otxt := range o.txt {
					if slices.Contains(otxt, s) {
						t.Errorf("TXT string of %s also sent to the other audience", n)
					}
				}
			}
		}
		for _, sz := range c.asizes {
			if sz-14-20-8 > 512 { // Ethernet, IPv4 and UDP headers
				t.Errorf("a %d-byte DNS answer frame: more than 512 bytes of DNS", sz)
			}
		}
		raw, err := os.ReadFile(c.pcap)
		if err != nil {
			t.Fatal(err)
		}
		for _, fixed := range []string{"v=merpati1", "\x02_n\x04boot", "TVJMMQ", relaylist.Magic} {
			if bytes.Contains(raw, []byte(fixed)) {
				t.Errorf("capture %d contains %q", i, fixed)
			}
		}
	}
	if slices.Equal(caps[0].asizes, caps[1].asizes) && slices.Equal(caps[0].qsizes, caps[1].qsizes) {
		t.Error("both audiences' bootstraps have the same sizes")
	}

	// What the resolver (or the censor) holds is useless without the
	// link's bootstrap key: audience 0's answers open with its key only.
	p := relaylist.PeriodOf(time.Now())
	open := func(c *bootCapture, key [link.BootstrapKeySize]byte, by [link.BootstrapKeySize]byte) error {
		a, names := relaylist.NewAudience(key), relaylist.NewAudience(by)
		var chunks [][]byte
		for i := 0; ; i++ {
			txt, ok := c.txt[strings.TrimSuffix(names.Name(p, i, bootZone), ".")]
			if !ok {
				break
			}
			b, err := relaylist.DecodeTXT(txt)
			if err != nil {
				return err
			}
			chunks = append(chunks, b)
		}
		_, err := a.Open(p, chunks)
		return err
	}
	k0, k1 := links[0].BootstrapKeys[0], links[1].BootstrapKeys[0]
	if err := open(caps[0], k0, k0); err != nil {
		t.Fatalf("audience 0's captured answers do not open with its key: %v", err)
	}
	if err := open(caps[0], k1, k0); err == nil {
		t.Error("audience 0's captured answers open with audience 1's key")
	}

	// nDPI flags nothing: no DGA-looking name, no oversized answer.
	ndpi := needTool(t, "ndpiReader")
	for _, c := range caps {
		out, err := exec.CommandContext(t.Context(), ndpi, "-i", c.pcap, "-v", "2").CombinedOutput()
		if err != nil {
			t.Fatalf("ndpiReader: %v\n%s", err, out)
		}
		var flows []string
		for line := range strings.Lines(string(out)) {
			if strings.Contains(line, "[proto: ") {
				flows = append(flows, strings.TrimSpace(line))
			}
		}
		if len(flows) == 0 || !strings.Contains(string(out), "DNS") {
			t.Fatalf("ndpiReader saw no DNS flow in %s:\n%s", c.pcap, out)
		}
		for _, f := range flows {
			if strings.Contains(f, "Risk") {
				t.Errorf("nDPI risk: %s", f)
			}
		}
		t.Logf("ndpiReader on %s: %d flows, no risk; first: %.200s", filepath.Base(c.pcap), len(flows), flows[0])
	}
}
