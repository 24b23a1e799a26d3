//go:build linux

package sleep

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/godbus/dbus/v5"
)

// systemd-logind's and the bus's own D-Bus names.
const (
	logindName    = "org.freedesktop.login1"
	logindPath    = dbus.ObjectPath("/org/freedesktop/login1")
	logindManager = "org.freedesktop.login1.Manager"
	prepareMember = "PrepareForSleep"

	busName     = "org.freedesktop.DBus"
	busPath     = dbus.ObjectPath("/org/freedesktop/DBus")
	ownerMember = "NameOwnerChanged"
)

// setupTimeout bounds connecting and subscribing: the daemon's watcher
// waits for Resumed, and a bus that does not answer must not keep it from
// watching everything else.
const setupTimeout = 10 * time.Second

// signalBuffer is deep enough that the connection never has to queue a
// signal aside, which godbus does in a goroutine of its own per signal,
// and so could deliver an owner change and a PrepareForSleep out of order.
const signalBuffer = 16

// Resumed connects to the bus, subscribes to logind's PrepareForSleep and
// sends on the channel each time the machine has resumed, until ctx ends;
// then it closes the connection and the channel. It fails if the bus
// cannot be reached or logind is not on it: then only the clocks tell.
// Losing the bus later closes the channel early, with a warning.
func (n *Notifier) Resumed(ctx context.Context) (<-chan struct{}, error) {
	conn, err := n.dial()
	if err != nil {
		return nil, err
	}
	setup, cancel := context.WithTimeout(ctx, setupTimeout)
	defer cancel()
	// Auth and Hello take no context: closing the connection is what
	// ends them if the bus does not answer.
	stop := context.AfterFunc(setup, func() { conn.Close() })
	sigs := make(chan *dbus.Signal, signalBuffer)
	owner, err := subscribe(setup, conn, sigs)
	if !stop() {
		err = fmt.Errorf("sleep: subscribing to logind on D-Bus: %w", setup.Err())
	}
	if err != nil {
		conn.Close()
		return nil, err
	}
	out := make(chan struct{}, 1)
	go n.follow(ctx, conn, sigs, &tracker{owner: owner}, out)
	return out, nil
}

func (n *Notifier) dial() (*dbus.Conn, error) {
	var conn *dbus.Conn
	var err error
	if n.opts.DBusAddress == "" {
		conn, err = dbus.SystemBusPrivate()
	} else {
		conn, err = dbus.Dial(n.opts.DBusAddress)
	}
	if err != nil {
		return nil, fmt.Errorf("sleep: connect to D-Bus: %w", err)
	}
	return conn, nil
}

// subscribe authenticates, asks for logind's signals and returns the
// unique name logind has now. It follows logind's name before it asks
// for it, so that a restart of logind in between is not missed.
func subscribe(ctx context.Context, conn *dbus.Conn, sigs chan<- *dbus.Signal) (string, error) {
	if err := conn.Auth(nil); err != nil {
		return "", fmt.Errorf("sleep: D-Bus authentication: %w", err)
	}
	if err := conn.Hello(); err != nil {
		return "", fmt.Errorf("sleep: D-Bus hello: %w", err)
	}
	conn.Signal(sigs)
	err := conn.AddMatchSignalContext(ctx, dbus.WithMatchSender(busName), dbus.WithMatchObjectPath(busPath),
		dbus.WithMatchInterface(busName), dbus.WithMatchMember(ownerMember), dbus.WithMatchArg(0, logindName))
	if err != nil {
		return "", fmt.Errorf("sleep: D-Bus match for %s's owner: %w", logindName, err)
	}
	err = conn.AddMatchSignalContext(ctx, dbus.WithMatchSender(logindName), dbus.WithMatchObjectPath(logindPath),
		dbus.WithMatchInterface(logindManager), dbus.WithMatchMember(prepareMember))
	if err != nil {
		return "", fmt.Errorf("sleep: D-Bus match for %s: %w", prepareMember, err)
	}
	owner, err := nameOwner(ctx, conn)
	var derr dbus.Error
	if errors.As(err, &derr) && derr.Name == "org.freedesktop.DBus.Error.NameHasNoOwner" {
		// At boot the daemon may come up before logind, which the bus
		// starts on demand.
		err = conn.BusObject().CallWithContext(ctx, busName+".StartServiceByName", 0, logindName, uint32(0)).Err
		if errors.As(err, &derr) && derr.Name == "org.freedesktop.DBus.Error.ServiceUnknown" {
			return "", fmt.Errorf("sleep: systemd-logind is not running, nor can the bus start it: %w", err)
		}
		if err != nil {
			return "", fmt.Errorf("sleep: starting systemd-logind: %w", err)
		}
		owner, err = nameOwner(ctx, conn)
	}
	if err != nil {
		return "", fmt.Errorf("sleep: owner of %s: %w", logindName, err)
	}
	return owner, nil
}

// nameOwner asks the bus for logind's unique name.
func nameOwner(ctx context.Context, conn *dbus.Conn) (string, error) {
	var owner string
	err := conn.BusObject().CallWithContext(ctx, busName+".GetNameOwner", 0, logindName).Store(&owner)
	return owner, err
}

// follow reads the signals until ctx ends or the bus goes away.
func (n *Notifier) follow(ctx context.Context, conn *dbus.Conn, sigs <-chan *dbus.Signal, t *tracker, out chan<- struct{}) {
	defer close(out)
	defer conn.Close()
	for {
		select {
		case <-ctx.Done():
			return
		case s, ok := <-sigs:
			if !ok {
				if ctx.Err() == nil {
					n.log.Warn("lost the D-Bus connection; resumes from sleep are no longer reported by logind")
				}
				return
			}
			switch t.read(s) {
			case eventSleep:
				n.log.Info("the system is going to sleep")
			case eventResume:
				n.log.Info("the system resumed from sleep")
				select {
				case out <- struct{}{}:
				default: // one pending is as good as many
				}
			}
		}
	}
}

// event is what a signal means.
type event int

const (
	eventNone   event = iota
	eventSleep        // PrepareForSleep(true): about to sleep
	eventResume       // PrepareForSleep(false): resumed
)

// tracker reads the signals the subscription brings. Any local user may
// send signals on the system bus, unicast ones included, which no match
// rule keeps out; so a PrepareForSleep counts only from the connection
// that owns logind's name, which the tracker follows through the bus's
// NameOwnerChanged (whose sender no one else can claim).
type tracker struct {
	// owner is logind's unique name, "" while it has none.
	owner string
}

// read returns what s means, and follows logind's name.
func (t *tracker) read(s *dbus.Signal) event {
	if s.Sender == busName && s.Path == busPath && s.Name == busName+"."+ownerMember {
		var name, old, owner string
		if dbus.Store(s.Body, &name, &old, &owner) == nil && name == logindName {
			t.owner = owner
		}
		return eventNone
	}
	if s.Sender == "" || s.Sender != t.owner || s.Path != logindPath || s.Name != logindManager+"."+prepareMember {
		return eventNone
	}
	var start bool
	if dbus.Store(s.Body, &start) != nil {
		return eventNone
	}
	if start {
		return eventSleep
	}
	return eventResume
}
