//go:build race

package pick

// raceEnabled reports that the race detector is on, which stretches every
// time limit several times.
const raceEnabled = true
