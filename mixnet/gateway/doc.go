// Package gateway holds what the mixnet's edges add to the Sphinx pipeline
// of package node. The entry gateway keeps clients' links and hands them the
// packets addressed to them, keeping a bounded inbox for a client that is
// briefly away. The exit gateway turns anonymous sessions into IP traffic:
// it gives each session inner addresses, reassembles its IP packets and
// writes them to a packet device, and sends the answers back in the reply
// blocks the client supplied. Neither touches the operating system: the
// packet device is an interface that a TUN device satisfies.
package gateway
