// Package netns builds small networks of Linux network namespaces joined by
// veth pairs and a bridge: the local mixnet and the end-to-end tests run
// their hosts in them. Every name carries a per-run identifier, so a lab
// left behind by a crashed run never collides with the next, and Close
// removes everything the lab made.
//
// Only Linux has network namespaces. Elsewhere the package has the same
// API so that its users build, but NewLab and every method that would make
// or enter a namespace return an error wrapping errors.ErrUnsupported.
package netns

import "errors"

// ErrNotRoot is returned when the caller cannot create namespaces.
var ErrNotRoot = errors.New("netns: creating network namespaces needs root")

// ID is the run identifier in every name the lab makes.
func (l *Lab) ID() string { return l.id }
