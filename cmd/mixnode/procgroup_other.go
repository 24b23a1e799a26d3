//go:build !unix

package main

import (
	"os"
	"os/exec"
)

// ownGroup does nothing: without Unix process groups each process is
// stopped on its own.
func ownGroup(*exec.Cmd) {}

// terminateGroup kills p, since there is no SIGTERM to ask it gently.
func terminateGroup(p *os.Process) { p.Kill() }

// killGroup kills p.
func killGroup(p *os.Process) { p.Kill() }

// running reports false: terminateGroup has already killed p, so there is
// nothing to wait for.
func running(*os.Process) bool { return false }
