//go:build race

package fast

// raceEnabled shrinks transfers: wireguard-go is slow under the race detector.
const raceEnabled = true
