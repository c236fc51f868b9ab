package censorlab

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// ErrNetemUnsupported is returned by [Lab.Netem] when the kernel has no
// netem queueing discipline (CONFIG_NET_SCH_NETEM), as in some minimal VM
// kernels, and the user-space fallback cannot run either. [Lab.Loss]
// still works there: it uses nftables.
var ErrNetemUnsupported = errors.New("censorlab: the kernel has no tc netem (sch_netem)")

// censorTimeout bounds each nft or tc command.
const censorTimeout = 10 * time.Second

// The censor's rules live in the forward chain of table inet filter in the
// censor's namespace: they see exactly the traffic the censor routes, and
// nothing else.
const censorRuleset = `table inet filter {
	chain forward {
		type filter hook forward priority filter; policy accept;
	}
}
`

func (l *Lab) initCensor(ctx context.Context) error {
	cmd := l.Command(ctx, Censor, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(censorRuleset)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("censorlab: nft: %w: %s", err, out)
	}
	return nil
}

// rule adds one rule to the censor's forward chain.
func (l *Lab) rule(expr ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), censorTimeout)
	defer cancel()
	args := append([]string{"add", "rule", "inet", "filter", "forward"}, expr...)
	if _, err := l.Run(ctx, Censor, "nft", args...); err != nil {
		return err
	}
	l.log.Info("censor rule", "rule", strings.Join(expr, " "))
	return nil
}

func checkAddr(addr string) (netip.Addr, error) {
	a, err := netip.ParseAddr(addr)
	if err != nil || !a.Is4() {
		return netip.Addr{}, fmt.Errorf("censorlab: %q: want an IPv4 address", addr)
	}
	return a, nil
}

// BlockUDP makes the censor drop every UDP packet it would forward, in
// both directions, as censors that block QUIC do.
func (l *Lab) BlockUDP() error {
	return l.rule("meta", "l4proto", "udp", "drop")
}

// BlockTCP makes the censor drop TCP packets to addr's port, so
// connections there time out (no reset is sent).
func (l *Lab) BlockTCP(addr string, port int) error {
	a, err := checkAddr(addr)
	if err != nil {
		return err
	}
	return l.rule("ip", "daddr", a.String(), "tcp", "dport", strconv.Itoa(port), "drop")
}

// Blackhole makes the censor drop every packet to or from addr, including
// those of connections already open.
func (l *Lab) Blackhole(addr string) error {
	a, err := checkAddr(addr)
	if err != nil {
		return err
	}
	if err := l.rule("ip", "daddr", a.String(), "drop"); err != nil {
		return err
	}
	return l.rule("ip", "saddr", a.String(), "drop")
}

// DropTo makes the censor drop every packet from the client's side to
// prefix (such as [DCPrefix], the "Telegram" addresses).
func (l *Lab) DropTo(prefix string) error {
	p, err := netip.ParsePrefix(prefix)
	if err != nil || !p.Addr().Is4() {
		return fmt.Errorf("censorlab: %q: want an IPv4 prefix", prefix)
	}
	return l.rule("iifname", "client0", "ip", "daddr", p.Masked().String(), "drop")
}

// Loss makes the censor drop percent of the packets it forwards, at
// random, with nftables; it works on kernels without netem. Both
// directions suffer, so a round trip loses about twice as much.
func (l *Lab) Loss(percent float64) error {
	if percent <= 0 || percent >= 100 {
		return fmt.Errorf("censorlab: loss %v%%: want between 0 and 100", percent)
	}
	n := int(percent*100 + 0.5)
	return l.rule("numgen", "random", "mod", "10000", "<", strconv.Itoa(n), "drop")
}

// Netem delays every packet the censor sends by delay and drops lossPercent
// of them, with tc netem on each of the censor's interfaces. Since every
// packet of the client's crosses the censor once each way, the client's
// round trip time to anything grows by 2×delay, and each direction loses
// lossPercent.
//
// On kernels without netem, Netem does the same in user space: the censor
// routes every packet it forwards through a TUN interface served by
// "labnode delay" (which needs Config.Bins), which writes each back after
// delay. It returns [ErrNetemUnsupported] only when neither works.
func (l *Lab) Netem(delay time.Duration, lossPercent float64) error {
	if delay < 0 || lossPercent < 0 || lossPercent >= 100 {
		return fmt.Errorf("censorlab: netem delay %v loss %v%%: out of range", delay, lossPercent)
	}
	ctx, cancel := context.WithTimeout(context.Background(), censorTimeout)
	defer cancel()
	for _, iface := range censorIfaces {
		args := []string{"qdisc", "replace", "dev", iface, "root", "netem",
			"delay", strconv.FormatInt(delay.Microseconds(), 10) + "us"}
		if lossPercent > 0 {
			args = append(args, "loss", strconv.FormatFloat(lossPercent, 'f', -1, 64)+"%")
		}
		out, err := l.Run(ctx, Censor, "tc", args...)
		if err != nil {
			if strings.Contains(string(out), "qdisc kind is unknown") {
				return l.userNetem(ctx, delay, lossPercent)
			}
			return err
		}
	}
	l.log.Info("censor netem", "delay", delay, "loss_percent", lossPercent)
	return nil
}

// The user-space netem: its TUN interface, and the policy routing table
// and rule priority that send forwarded packets into it.
const (
	delayDev   = "delay0"
	delayTable = "100"
	delayPref  = "100"
)

func (l *Lab) userNetem(ctx context.Context, delay time.Duration, lossPercent float64) error {
	if l.cfg.Bins.LabNode == "" {
		return fmt.Errorf("%w, and Config.Bins.LabNode is not set for the user-space fallback", ErrNetemUnsupported)
	}
	l.stopUserNetem(ctx)
	p, err := l.Start(Censor, "delay", l.cfg.Bins.LabNode, "delay", "-dev", delayDev,
		"-delay", delay.String(), "-loss", strconv.FormatFloat(lossPercent, 'f', -1, 64))
	if err != nil {
		return err
	}
	l.mu.Lock()
	l.delay = p
	l.mu.Unlock()
	if err := poll(ctx, p, "the delay interface", func() bool {
		return l.ip(ctx, "-n", l.NS(Censor), "link", "show", delayDev) == nil
	}); err != nil {
		return fmt.Errorf("%w: user-space fallback: %w", ErrNetemUnsupported, err)
	}
	if err := l.ip(ctx, "-n", l.NS(Censor), "link", "set", delayDev, "up"); err != nil {
		return err
	}
	// Packets come back from the TUN with the client's (or the relay's)
	// source address, which strict reverse-path filtering would drop.
	if _, err := l.Run(ctx, Censor, "sh", "-c", "for f in /proc/sys/net/ipv4/conf/*/rp_filter; do echo 0 > $f; done"); err != nil {
		return err
	}
	// Only the lab prefix is routed into the TUN, and what comes back
	// out of it is routed by the main table, which knows only the lab.
	if err := l.ip(ctx, "-n", l.NS(Censor), "route", "add", LabPrefix, "dev", delayDev, "table", delayTable); err != nil {
		return err
	}
	for _, iface := range censorIfaces {
		if err := l.ip(ctx, "-n", l.NS(Censor), "rule", "add", "pref", delayPref, "iif", iface, "lookup", delayTable); err != nil {
			return err
		}
	}
	l.log.Info("censor netem in user space (the kernel has no sch_netem)", "delay", delay, "loss_percent", lossPercent)
	return nil
}

// stopUserNetem undoes userNetem, if it ran.
func (l *Lab) stopUserNetem(ctx context.Context) {
	l.mu.Lock()
	p := l.delay
	l.delay = nil
	l.mu.Unlock()
	if p == nil {
		return
	}
	for range censorIfaces {
		l.ip(ctx, "-n", l.NS(Censor), "rule", "del", "pref", delayPref)
	}
	p.Stop() // the TUN interface, and the route through it, go with it
}

// MTU makes the censor's links towards the client and the relay carry IP
// packets of at most mtu bytes, as a tunnel, a PPPoE line or a mobile
// network on the path does, while both ends keep 1,500: a packet too big
// for the hop is dropped, and its sender hears why (ICMP "fragmentation
// needed", which the censor lets through) when it set don't-fragment.
// [Lab.Reset] restores 1,500.
func (l *Lab) MTU(mtu int) error {
	if mtu < 1280 || mtu > 1500 {
		return fmt.Errorf("censorlab: MTU %d: want 1280 to 1500", mtu)
	}
	ctx, cancel := context.WithTimeout(context.Background(), censorTimeout)
	defer cancel()
	for _, iface := range []string{"client0", "relay0"} {
		if _, err := l.Run(ctx, Censor, "ip", "link", "set", "dev", iface, "mtu", strconv.Itoa(mtu)); err != nil {
			return err
		}
	}
	l.log.Info("censor MTU", "mtu", mtu)
	return nil
}

// Reset removes every rule and qdisc the censor applies and restores its
// links' MTU, so it forwards everything again.
func (l *Lab) Reset() error {
	ctx, cancel := context.WithTimeout(context.Background(), censorTimeout)
	defer cancel()
	if _, err := l.Run(ctx, Censor, "nft", "flush", "chain", "inet", "filter", "forward"); err != nil {
		return err
	}
	for _, iface := range censorIfaces {
		// Fails when there is no netem qdisc, which is fine.
		l.Run(ctx, Censor, "tc", "qdisc", "del", "dev", iface, "root")
	}
	l.stopUserNetem(ctx)
	for _, iface := range censorIfaces {
		if _, err := l.Run(ctx, Censor, "ip", "link", "set", "dev", iface, "mtu", "1500"); err != nil {
			return err
		}
	}
	l.log.Info("censor reset")
	return nil
}

// Rules returns the censor's current nftables chain and qdiscs, for logs.
func (l *Lab) Rules() string {
	ctx, cancel := context.WithTimeout(context.Background(), censorTimeout)
	defer cancel()
	nft, _ := l.Run(ctx, Censor, "nft", "list", "chain", "inet", "filter", "forward")
	tc, _ := l.Run(ctx, Censor, "tc", "qdisc", "show")
	s := string(nft) + string(tc)
	l.mu.Lock()
	user := l.delay != nil
	l.mu.Unlock()
	if user {
		rules, _ := l.Run(ctx, Censor, "ip", "rule", "show", "pref", delayPref)
		s += "user-space netem (labnode delay) on " + delayDev + ", entered by:\n" + string(rules)
	}
	return s
}
