// Package ja4 computes the JA4 fingerprint (FoxIO) of a TLS ClientHello
// parsed by package hello, over TCP or QUIC.
//
// Only tests and lab tools use it: the fingerprint tests of
// transport/tlscarrier and transport/quiccarrier compare the JA4 of our
// hellos with Chromium's, and scripts/ja4-capture.sh cross-checks them
// with tshark. The binaries do not link it, and nothing in the relay
// decides on a fingerprint. It owns the fingerprint's rules (GREASE
// handling, sorting, hashing); parsing the hello is package hello's job.
package ja4
