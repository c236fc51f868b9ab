// Package censorlab builds a censor lab out of Linux network namespaces:
// four hosts joined by veth pairs, with a censor in the middle that drops,
// blackholes and delays traffic with nftables and tc netem, so that tests
// can check that merpati gets Telegram traffic through.
//
//	           10.201.1.0/24            10.201.2.0/24
//	client ─────────────────── censor ─────────────────── relay (relay1 .2.2, relay2 .2.3, port 443)
//	 .1.2                  .1.1  │  .2.1                      │ .4.1
//	                      .3.1   │                            │ 10.201.4.0/24
//	                10.201.3.0/24│                            │ .4.2
//	                             └───────────────────────── dc (the "Telegram" DC, 10.201.100.2:443)
//
// The client reaches everything through the censor; the relay reaches the
// DC over its own link, outside the censor's reach, as a relay abroad
// would. Addresses exist only inside the lab's namespaces: no namespace is
// linked to the host's, no route leaves 10.201.0.0/16, there is no default
// route and no NAT, so nothing in the lab can reach another machine.
//
// Everything needs root, iproute2 (ip, tc, ss) and nftables (nft); see
// [Check]. On kernels without tc netem, [Lab.Netem] delays packets in user
// space instead, through a TUN interface in the censor host. Go code runs inside a namespace as a separate process started
// with "ip netns exec" ([Lab.Start], [Lab.Command]): the merpati and
// merpati-relay binaries and the lab's own helper, labnode (a tgtest DC, a
// cover web site and a gotd MTProto client; see cmd/labnode), built once
// by [Build].
//
// Namespace names are "mpl-PID-RAND-HOST" for the process that made the
// lab, so parallel runs never collide. [Lab.Close] stops every process and
// deletes the namespaces; [New] first deletes leftovers of processes that
// no longer exist ([CleanupStale]).
//
// Typical use in a test:
//
//	bins := censorlab.BuildOnce(t)               // go build, once per test binary
//	lab := censorlab.NewT(t, bins)                // namespaces, torn down by t.Cleanup
//	st, err := lab.StartServices(ctx)            // DC, cover site, relay on both relay addresses
//	lab.BlockUDP()                               // the censor's rules
//	lab.StartClient(ctx, "client", st.Link)      // merpati run in the client host
//	stats, err := lab.Telegram(ctx, censorlab.ViaClient("client"), 3)
//
// Humans use scripts/censor-lab.sh, which runs "labnode lab": the same lab
// in the foreground until interrupted, with the censor rules given as
// flags.
package censorlab
