//go:build !race

package client_test

// timingSlack: without the race detector, time limits hold as stated.
const timingSlack = 1
