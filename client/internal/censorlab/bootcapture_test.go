package censorlab_test

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
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
	name   string
	pcap   string
	key    [link.BootstrapKeySize]byte // the audience's, to tell chunks apart
	period int64                       // the day fetched
	names  []string                    // query names, in order
	txt    map[string][]string         // TXT strings of each answered name
	qsizes []int                       // frame sizes of queries
	asizes []int                       // frame sizes of answers
}

// txtLengths returns the length of each chunk's TXT record, in chunk
// order (as far as the chunks were captured).
func (c *bootCapture) txtLengths() []int {
	a := relaylist.NewAudience(c.key)
	var lens []int
	for i := 0; ; i++ {
		txt, ok := c.txt[strings.TrimSuffix(a.Name(c.period, i, bootZone), ".")]
		if !ok {
			return lens
		}
		lens = append(lens, len(strings.Join(txt, "")))
	}
}

// captureRefresh runs "merpati refresh" with lk in the client host over
// resolver, with tshark capturing port 53 on the client's link (as the
// censor would), and returns what was captured. A clock offset other
// than zero moves the client's clock (refresh --clock-offset), so that it
// fetches another day's names.
func captureRefresh(t *testing.T, lab *censorlab.Lab, name string, lk *link.Link, resolver string, offset time.Duration) *bootCapture {
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
		"--resolvers", resolver, "--config-dir", filepath.Join(lab.Dir, name+"-config"), "--clock-offset", offset.String())
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
	c := &bootCapture{name: name, pcap: pcap, key: lk.BootstrapKeys[0], period: relaylist.PeriodOf(time.Now().Add(offset)),
		txt: map[string][]string{}}
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
	t.Logf("%s over %s: %d queries of %v bytes, answers of %v bytes; TXT of %v characters", name, resolver,
		len(c.names), c.qsizes, c.asizes, c.txtLengths())
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
// second), and of the first audience on the day before (the client's
// clock moved back a day; the server answers yesterday's names too), and
// checks what the censor learns: no query name or TXT string repeats
// across the audiences or the days, nor does the sequence of TXT lengths
// taken in chunk order; every name is one word-like label under the
// zone; nothing of the old format (the _n index, "v=merpati1", the
// list's magic) is on the wire; every answer fits 512 bytes; the captured
// answers open only with their own audience's key; and nDPI's ndpiReader
// raises no risk on any flow.
func TestBootstrapCapture(t *testing.T) {
	lab, svc := newLab(t)
	links := publish(t, lab, svc, 2)
	udp, tcp := "udp://"+censorlab.DNSAddr+":53", "tcp://"+censorlab.DNSAddr+":53"
	caps := []*bootCapture{
		captureRefresh(t, lab, "audience0", links[0], udp, 0),
		captureRefresh(t, lab, "audience1", links[1], udp, 0),
		captureRefresh(t, lab, "audience0-yesterday", links[0], udp, -24*time.Hour),
		captureRefresh(t, lab, "audience1-tcp", links[1], tcp, 0),
	}
	if caps[2].period != caps[0].period-1 {
		t.Fatalf("periods %d and %d, want consecutive days", caps[0].period, caps[2].period)
	}
	label := regexp.MustCompile(`^[a-z]{3,}(-[a-z]{3,})?[0-9]{0,2}$`)
	distinct := caps[:3] // different audiences or days
	for i, c := range distinct {
		for _, n := range c.names {
			if l, ok := strings.CutSuffix(n, "."+bootZone); !ok || !label.MatchString(l) || len(l) > 16 {
				t.Errorf("%s: query name %s is not one word-like label under the zone", c.name, n)
			}
		}
		for _, o := range distinct[i+1:] {
			for _, n := range c.names {
				if slices.Contains(o.names, n) {
					t.Errorf("query name %s asked in both %s and %s", n, c.name, o.name)
				}
			}
			for n, txt := range c.txt {
				for _, s := range txt {
					for _, otxt := range o.txt {
						if slices.Contains(otxt, s) {
							t.Errorf("TXT string of %s in %s also sent in %s", n, c.name, o.name)
						}
					}
				}
			}
			// The chunk sizes are drawn per audience and day: their
			// sequences differ (by chance they agree on 8 chunks once in
			// 65,536).
			a, b := c.txtLengths(), o.txtLengths()
			if k := min(len(a), len(b)); k < 8 {
				t.Logf("%s and %s: %d chunks in common, too few to compare sizes", c.name, o.name, k)
			} else if slices.Equal(a[:k], b[:k]) {
				t.Errorf("%s and %s: the same TXT lengths in chunk order, %v", c.name, o.name, a[:k])
			}
		}
	}
	for _, c := range caps {
		for _, sz := range c.asizes {
			if sz-14-20-8 > 512 && !strings.HasSuffix(c.name, "-tcp") { // Ethernet, IPv4 and UDP headers
				t.Errorf("%s: a %d-byte DNS answer frame: more than 512 bytes of DNS", c.name, sz)
			}
		}
		raw, err := os.ReadFile(c.pcap)
		if err != nil {
			t.Fatal(err)
		}
		for _, fixed := range []string{"v=merpati1", "\x02_n\x04boot", "TVJMMQ", relaylist.Magic} {
			if bytes.Contains(raw, []byte(fixed)) {
				t.Errorf("capture %s contains %q", c.name, fixed)
			}
		}
	}

	// What the resolver (or the censor) holds is useless without the
	// link's bootstrap key: audience 0's answers open with its key only.
	open := func(c *bootCapture, key [link.BootstrapKeySize]byte) error {
		a, names := relaylist.NewAudience(key), relaylist.NewAudience(c.key)
		var chunks [][]byte
		for i := 0; ; i++ {
			txt, ok := c.txt[strings.TrimSuffix(names.Name(c.period, i, bootZone), ".")]
			if !ok {
				break
			}
			b, err := relaylist.DecodeTXT(txt)
			if err != nil {
				return err
			}
			chunks = append(chunks, b)
		}
		_, err := a.Open(c.period, chunks)
		return err
	}
	k0, k1 := links[0].BootstrapKeys[0], links[1].BootstrapKeys[0]
	for _, c := range []*bootCapture{caps[0], caps[2]} {
		if err := open(c, k0); err != nil {
			t.Fatalf("%s: captured answers do not open with the audience's key: %v", c.name, err)
		}
		if err := open(c, k1); err == nil {
			t.Errorf("%s: captured answers open with audience 1's key", c.name)
		}
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
