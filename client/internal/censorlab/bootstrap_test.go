package censorlab_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/merpati/merpati/client/internal/censorlab"
	"github.com/merpati/merpati/transport/link"
)

// bootZone is the bootstrap domain of the lab's signed relay list.
const bootZone = "boot.merpati.test"

// bootstrapLimit bounds the time from the blackhole to the first
// Telegram RPC through a relay learned over DNS. The client gives up on
// the dead relay after its race timeout (10 s) before it asks DNS.
const bootstrapLimit = 20 * time.Second

// startBootstrap publishes a list naming relay2 only, for one audience,
// and returns the user's link (see publish).
func startBootstrap(t *testing.T, lab *censorlab.Lab, svc *censorlab.Services) *link.Link {
	t.Helper()
	return publish(t, lab, svc, 1)[0]
}

// publish publishes, through "merpati-relay list" and "merpati-relay
// dns" at censorlab.DNSAddr, one list naming relay2 only (twelve times) for each of
// audiences audiences, signed with a new list key, and returns one user
// link per audience: relay1 only, with dns=, lk= and the audience's bk=
// (made by "merpati-relay list share").
func publish(t *testing.T, lab *censorlab.Lab, svc *censorlab.Services, audiences int) []*link.Link {
	t.Helper()
	relayCLI := func(args ...string) string {
		t.Helper()
		out, err := exec.CommandContext(t.Context(), lab.Bins().MerpatiRelay, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("merpati-relay %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	keyFile := filepath.Join(lab.Dir, "list-key.pem")
	relaysFile := filepath.Join(lab.Dir, "relays.json")
	relayCLI("list", "keygen", "--out", keyFile)
	second := *svc.Link
	second.Relays = []string{relayAddr(censorlab.Relay2Addr)}
	// Twelve entries (all relay2, under several names), so the list
	// takes a dozen chunks, as a real one would.
	for i := range 12 {
		second.Name = fmt.Sprintf("relay2 #%d", i)
		relayCLI("list", "add", "--in", relaysFile, "--link", second.String())
	}
	user := *svc.Link
	user.Relays = []string{relayAddr(censorlab.Relay1Addr)}
	var lists []string
	var links []*link.Link
	for i := range audiences {
		audFile := filepath.Join(lab.Dir, fmt.Sprintf("audience%d.pem", i))
		listFile := filepath.Join(lab.Dir, fmt.Sprintf("list%d.pem", i))
		relayCLI("list", "audience", "--out", audFile)
		relayCLI("list", "sign", "--key", keyFile, "--audience", audFile, "--in", relaysFile,
			"--seq", "1", "--ttl", "1h", "--out", listFile)
		lists = append(lists, listFile)
		out := relayCLI("list", "share", "--link", user.String(), "--zone", bootZone, "--key", keyFile, "--audience", audFile)
		l, err := link.Parse(strings.TrimSpace(out))
		if err != nil {
			t.Fatalf("list share printed %q: %v", out, err)
		}
		links = append(links, l)
	}
	if _, err := lab.StartDNS(t.Context(), bootZone, lists...); err != nil {
		t.Fatal(err)
	}
	return links
}

// logTime returns the time of the first record with message msg in p's
// JSON log, or the zero time.
func logTime(p *censorlab.Proc, msg string) time.Time {
	sc := bufio.NewScanner(strings.NewReader(p.Output()))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var rec struct {
			Time time.Time `json:"time"`
			Msg  string    `json:"msg"`
		}
		if json.Unmarshal(sc.Bytes(), &rec) == nil && rec.Msg == msg {
			return rec.Time
		}
	}
	return time.Time{}
}

// TestBootstrapOverDNS: the only relay the user's link names is
// blackholed by the censor; the client learns relay2 from the signed list
// served over plain DNS (which the censor lets through) and Telegram
// traffic resumes through it. Run with relay1 blackholed while the
// client's session to it is up, and before the client starts.
func TestBootstrapOverDNS(t *testing.T) {
	for _, tc := range []struct {
		name        string
		beforeStart bool
	}{
		{"mid-session", false},
		{"before-start", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			lab, svc := newLab(t)
			user := startBootstrap(t, lab, svc)
			resolvers := []string{"--resolvers", "udp://" + censorlab.DNSAddr + ":53"}

			var blackholed time.Time
			blackhole := func() {
				blackholed = time.Now()
				if err := lab.Blackhole(censorlab.Relay1Addr); err != nil {
					t.Fatal(err)
				}
			}
			if tc.beforeStart {
				blackhole()
			}
			client, err := lab.StartClient(t.Context(), "merpati", user, resolvers...)
			if err != nil {
				t.Fatal(err)
			}
			if !tc.beforeStart {
				if _, err := lab.Telegram(t.Context(), svc, censorlab.TelegramOptions{SOCKS: censorlab.ClientListen}); err != nil {
					t.Fatalf("before the blackhole: %v", err)
				}
				before := censorlab.ClientSessions(client)
				if len(before) == 0 {
					t.Fatal("client logged no session")
				}
				for _, s := range before {
					if s.Relay != relayAddr(censorlab.Relay1Addr) {
						t.Fatalf("sessions before the blackhole = %+v, want relay1 only", before)
					}
				}
				blackhole()
			}

			// One MTProto client, given time for the client's race
			// timeout on relay1 and the DNS fetch; a retry only if it
			// fails early.
			deadline := blackholed.Add(bootstrapLimit + 5*time.Second)
			st, attempts, lastErr := telegramUntil(t, lab, svc, deadline)
			if lastErr != nil {
				t.Fatalf("no Telegram RPC within %v of the blackhole (%d attempts): %v",
					ms(time.Since(blackholed)), attempts, lastErr)
			}
			through := time.Since(blackholed)

			var moved time.Duration
			sessions := censorlab.ClientSessions(client)
			for _, s := range sessions {
				if s.Relay == relayAddr(censorlab.Relay2Addr) && s.Time.After(blackholed) {
					moved = s.Time.Sub(blackholed)
					break
				}
			}
			if moved == 0 {
				t.Fatalf("Telegram got through but the client has no session to relay2: %+v", sessions)
			}
			learned := logTime(client, "relays learned over DNS")
			if learned.IsZero() {
				t.Fatalf("client did not log %q", "relays learned over DNS")
			}
			t.Logf("relay1 blackholed %s: list fetched over DNS after %v, session to relay2 up after %v, "+
				"first Telegram RPC after %v (%d attempts; last run: key exchange %v, first RPC %v)",
				tc.name, ms(learned.Sub(blackholed)), ms(moved), ms(through), attempts, ms(st.KeyExchange), ms(st.FirstRPC))
			if through > bootstrapLimit {
				t.Errorf("Telegram resumed after %v, want within %v", ms(through), bootstrapLimit)
			}
		})
	}
}
