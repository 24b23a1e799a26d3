// Package control serves mixvpnd's control API (controlpb) on a Unix socket
// to the CLI and the GUI, admitting only root and members of the daemon's
// group, and validating every request before the daemon sees it.
package control
