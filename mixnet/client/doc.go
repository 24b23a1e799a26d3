// Package client is the anonymous client of the mixnet: it sends a
// constant-rate Loopix stream to its entry gateway, in which real messages,
// drop cover and loop cover are indistinguishable, and runs a session with
// an exit gateway on top of it.
//
// One goroutine sends on a Poisson schedule of rate Rate+LoopRate. At each
// tick it sends a loop with probability LoopRate/(Rate+LoopRate), otherwise
// a ready real message if there is one, otherwise drop cover. Because the
// schedule never depends on whether real traffic exists, an observer of the
// client's link learns nothing from its timing. Loops travel as SURB replies
// the client made for itself, so its entry cannot tell them from the exit's
// replies. The Sphinx work (about 300 µs per packet) is done ahead of time
// by a worker that keeps small pools of cover, loops and reply blocks, so a
// tick costs one pool receive and one Uplink.Send.
package client
