// Package socks is Anonymous mode for people without root: a SOCKS5
// server (RFC 1928: CONNECT and UDP ASSOCIATE without authentication,
// for a listener on loopback) whose connections and datagrams go through
// a mixnet session by a userspace TCP/IP stack, so no TUN device, route
// or firewall rule is needed. Front runs the mixnet client in process
// and is the Dialer and PacketListener the Server uses. Names in requests
// reach the Front unresolved and are looked up through the tunnel, never
// by the local resolver, so neither the traffic nor the names leave the
// machine outside the mixnet.
package socks
