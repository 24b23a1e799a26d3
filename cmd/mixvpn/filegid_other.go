//go:build !unix

package main

import "os"

// fileGID reports no group: files have no owning group here, so
// socketGroup falls back to the default group.
func fileGID(os.FileInfo) (uint32, bool) { return 0, false }
