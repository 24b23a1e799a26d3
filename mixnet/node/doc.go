// Package node is the packet pipeline every Sphinx-processing node runs:
// entry gateways, mixes and exit gateways alike. Packets from the link are
// unwrapped on all cores, replays are dropped, forward packets are held for
// the delay their header carries by a single scheduler and then sent on;
// packets for which this node is the last hop are handed to the role's own
// handler. Under overload it drops and counts rather than stall the link
// readers, so memory stays bounded.
package node
