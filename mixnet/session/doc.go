// Package session is the protocol an anonymous client speaks with an exit
// gateway inside Sphinx payloads: IP packets, single-use reply blocks and
// the few control messages that open, keep and close a session.
//
// Every message starts with a version byte and the session identifier the
// client chose at random, followed by records (type, 16-bit length, body).
// IP packets travel whole when they fit and in fragments otherwise; the
// receiver reassembles them with bounded memory. The mixnet may drop and
// reorder messages: TCP inside recovers its data, while control records
// carry a sequence number and are retried until the peer acknowledges them.
package session
