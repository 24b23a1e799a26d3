// Package sysmon gives the Go runtime's monitor thread (sysmon) a timer
// slack, so that a process that wakes from idle for every packet does not
// also pay for thousands of the monitor's 20 µs sleeps a second.
//
// While any goroutine runs, sysmon sleeps 20 µs at a time; on a
// paravirtualised machine each of those wake-ups is a costly context
// switch, and they measured a third of a mix node's CPU and a tenth of an
// anonymous-mode client's. With slack the kernel may defer each sleep by
// up to that long. Sysmon's duties tolerate a millisecond: it preempts
// goroutines that ran for 10 ms, takes back the P of a goroutine blocked
// in a system call, and polls the network when no P is idle (the reason
// to keep the slack short).
package sysmon

import "time"

// DefaultSlack is the slack the project's daemons give sysmon: 10 ms
// raised the anonymous round trip from 1.05-1.12 to 1.30-1.38 times the
// model's, 1 ms kept it with the same CPU saving (docs/PERFORMANCE.md).
const DefaultSlack = time.Millisecond
