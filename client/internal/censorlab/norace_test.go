//go:build !race

package censorlab_test

// timingSlack: without the race detector, the failover limit holds as
// stated.
const timingSlack = 1
