//go:build unix

package main

import (
	"os"
	"syscall"
)

// fileGID is the group that owns the file fi describes.
func fileGID(fi os.FileInfo) (uint32, bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, false
	}
	return st.Gid, true
}
