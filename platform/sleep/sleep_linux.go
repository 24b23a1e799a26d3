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

// signalBuffer holds the signals of an ordinary burst (logind's, and the
// bus's about logind's name) until follow reads them. It guarantees no
// order: when it is full godbus hands each further signal over from a
// goroutine of its own, so that signals may come out of order, and any
// local user can fill it, by sending the notifier a flood of unicast
// signals, which no match rule keeps out. Out of order, a PrepareForSleep
// from a restarted logind may come before the NameOwnerChanged that names
// it, or two owner changes may swap and leave the tracker on a name gone
// from the bus: at worst resumes go unreported (and the clocks still
// show a long sleep). A spoofed one never counts, in any order: the
// tracker takes PrepareForSleep only from a unique name the bus said
// owned logind's, and the bus never gives a unique name twice.
const signalBuffer = 16

// Resumed connects to the bus, subscribes to logind's PrepareForSleep and
// sends on the channel each time the machine has resumed, until ctx ends;
// then it closes the connection and the channel. It fails if the bus
// cannot be reached or logind is not on it: then only the clocks tell.
// Losing the bus later does not close the channel: Resumed connects and
// subscribes again, retrying after a second, then after delays doubling
// up to half a minute, for as long as ctx lasts. A resume while it has no
// connection goes unreported; the clocks still show a long sleep.
func (n *Notifier) Resumed(ctx context.Context) (<-chan struct{}, error) {
	sub, err := n.subscribe(ctx)
	if err != nil {
		return nil, err
	}
	out := make(chan struct{}, 1)
	go n.run(ctx, sub, out)
	return out, nil
}

// subscription is one connection's subscription to logind's signals.
type subscription struct {
	conn *dbus.Conn
	sigs chan *dbus.Signal
	t    tracker
}

// subscribe connects to the bus and subscribes to logind's signals.
func (n *Notifier) subscribe(ctx context.Context) (*subscription, error) {
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
	owner, err := subscribeOn(setup, conn, sigs)
	if !stop() {
		err = fmt.Errorf("sleep: subscribing to logind on D-Bus: %w", setup.Err())
	}
	if err != nil {
		conn.Close()
		return nil, err
	}
	return &subscription{conn: conn, sigs: sigs, t: tracker{owner: owner}}, nil
}

// run follows sub, and the subscriptions that replace it whenever the bus
// goes away, until ctx ends; then it closes out.
func (n *Notifier) run(ctx context.Context, sub *subscription, out chan<- struct{}) {
	defer close(out)
	for sub != nil {
		n.follow(ctx, sub, out)
		sub.conn.Close()
		if ctx.Err() != nil {
			return
		}
		n.log.Warn("lost the D-Bus connection; reconnecting to hear of resumes from sleep again")
		sub = n.resubscribe(ctx)
	}
}

// resubscribe subscribes again, first after retryFirst, since a bus that
// has just gone away takes a moment to come back, then after a delay that
// doubles with each failure up to retryMax. It returns nil once ctx ends.
func (n *Notifier) resubscribe(ctx context.Context) *subscription {
	delay := n.retryFirst
	timer := time.NewTimer(delay)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-timer.C:
		}
		sub, err := n.subscribe(ctx)
		if err == nil {
			n.log.Info("reconnected to D-Bus; resumes from sleep are reported again")
			return sub
		}
		if ctx.Err() != nil {
			return nil
		}
		delay = min(2*delay, n.retryMax)
		n.log.Debug("reconnecting to D-Bus failed", "err", err, "retry_in", delay)
		timer.Reset(delay)
	}
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

// subscribeOn authenticates, asks for logind's signals and returns the
// unique name logind has now. It follows logind's name before it asks
// for it, so that a restart of logind in between is not missed.
func subscribeOn(ctx context.Context, conn *dbus.Conn, sigs chan<- *dbus.Signal) (string, error) {
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

// follow reads sub's signals until ctx ends or the bus goes away.
func (n *Notifier) follow(ctx context.Context, sub *subscription, out chan<- struct{}) {
	for {
		select {
		case <-ctx.Done():
			return
		case s, ok := <-sub.sigs:
			if !ok {
				return
			}
			switch sub.t.read(s) {
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
