//go:build race

package client_test

// timingSlack stretches the time limits of failover tests under the race
// detector, which slows everything several times. scripts/test.sh also runs
// those tests without it, where the limits hold as the issues state them.
const timingSlack = 3
