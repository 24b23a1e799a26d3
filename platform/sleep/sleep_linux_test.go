//go:build linux

package sleep

import (
	"context"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"
	"github.com/mixvpn/mixvpn/platform/dbustest"
)

func TestTrackerReadsSignals(t *testing.T) {
	const logind, other = ":1.5", ":1.9"
	prepare := func(sender string, body ...any) *dbus.Signal {
		return &dbus.Signal{Sender: sender, Path: logindPath, Name: logindManager + "." + prepareMember, Body: body}
	}
	owner := func(sender, old, owner string) *dbus.Signal {
		return &dbus.Signal{Sender: sender, Path: busPath, Name: busName + "." + ownerMember, Body: []any{logindName, old, owner}}
	}
	steps := []struct {
		what  string
		s     *dbus.Signal
		want  event
		owner string
	}{
		{"going to sleep", prepare(logind, true), eventSleep, logind},
		{"resumed", prepare(logind, false), eventResume, logind},
		{"from someone else", prepare(other, false), eventNone, logind},
		{"no body", prepare(logind), eventNone, logind},
		{"wrong type", prepare(logind, "false"), eventNone, logind},
		{"two arguments", prepare(logind, false, false), eventNone, logind},
		{"another member", &dbus.Signal{Sender: logind, Path: logindPath, Name: logindManager + ".PrepareForShutdown", Body: []any{false}}, eventNone, logind},
		{"another path", &dbus.Signal{Sender: logind, Path: "/org/freedesktop/login1/session/1", Name: logindManager + "." + prepareMember, Body: []any{false}}, eventNone, logind},
		{"owner change not from the bus", owner(other, logind, other), eventNone, logind},
		{"another name's owner", &dbus.Signal{Sender: busName, Path: busPath, Name: busName + "." + ownerMember, Body: []any{"org.example", "", other}}, eventNone, logind},
		{"logind leaves", owner(busName, logind, ""), eventNone, ""},
		{"nobody is logind", prepare("", false), eventNone, ""},
		{"its old name is not", prepare(logind, false), eventNone, ""},
		{"logind is back", owner(busName, "", other), eventNone, other},
		{"the new logind resumed", prepare(other, false), eventResume, other},
		{"the old one is not it", prepare(logind, false), eventNone, other},
	}
	tr := &tracker{owner: logind}
	for _, s := range steps {
		if got := tr.read(s.s); got != s.want || tr.owner != s.owner {
			t.Fatalf("%s: event %v owner %q, want %v %q", s.what, got, tr.owner, s.want, s.owner)
		}
	}
}

// startBus runs a private dbus-daemon for the test and returns its
// address and a function that kills it.
func startBus(t *testing.T) (string, func()) {
	t.Helper()
	return startBusIn(t, t.TempDir())
}

// startBusIn runs a private dbus-daemon listening on dir/bus, so that a
// test can start another where one it killed was.
func startBusIn(t *testing.T, dir string) (string, func()) {
	t.Helper()
	return dbustest.StartIn(t, dir, "TestTrackerReadsSignals still covers reading the signals")
}

// connect opens a test connection to the bus, owning names if given.
func connect(t *testing.T, addr string, names ...string) *dbus.Conn {
	t.Helper()
	conn, err := dbus.Connect(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	for _, n := range names {
		if reply, err := conn.RequestName(n, dbus.NameFlagDoNotQueue); err != nil || reply != dbus.RequestNameReplyPrimaryOwner {
			t.Fatalf("own %s: %v %v", n, reply, err)
		}
	}
	return conn
}

// logs is a slog handler that hands the test each message logged. It
// drops what the test has left unread for too long, so that a notifier
// retrying meanwhile never blocks on it.
type logs chan string

func (l logs) Enabled(context.Context, slog.Level) bool { return true }
func (l logs) Handle(_ context.Context, r slog.Record) error {
	select {
	case l <- r.Message:
	default:
	}
	return nil
}
func (l logs) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l logs) WithGroup(string) slog.Handler      { return l }

// until waits for a message logged that starts with prefix, skipping
// others.
func (l logs) until(t *testing.T, prefix string) {
	t.Helper()
	for {
		if m := l.next(t); strings.HasPrefix(m, prefix) {
			return
		}
	}
}

// next waits for the next message logged.
func (l logs) next(t *testing.T) string {
	t.Helper()
	select {
	case m := <-l:
		return m
	case <-time.After(10 * time.Second):
		t.Fatal("nothing logged within 10s")
		return ""
	}
}

// prepareForSleep emits logind's signal from conn.
func prepareForSleep(t *testing.T, conn *dbus.Conn, start bool) {
	t.Helper()
	if err := conn.Emit(logindPath, logindManager+"."+prepareMember, start); err != nil {
		t.Fatal(err)
	}
}

// flush returns once the bus has routed everything conn sent before: the
// bus handles a connection's messages in order, so a reply to a later
// call comes after it.
func flush(t *testing.T, conn *dbus.Conn) {
	t.Helper()
	if err := conn.BusObject().Call("org.freedesktop.DBus.Peer.Ping", 0).Err; err != nil {
		t.Fatal(err)
	}
}

func TestResumedOnABus(t *testing.T) {
	addr, _ := startBus(t)
	logind := connect(t, addr, logindName)
	log := make(logs, 16)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	resumed, err := New(Options{DBusAddress: addr, Logger: slog.New(log)}).Resumed(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// quiet checks that no resume is pending; the messages logged say
	// that the notifier has read what came before.
	quiet := func(what string) {
		t.Helper()
		select {
		case <-resumed:
			t.Fatalf("%s: reported a resume", what)
		default:
		}
	}
	resume := func(what string) {
		t.Helper()
		if m := log.next(t); m != "the system resumed from sleep" {
			t.Fatalf("%s: logged %q", what, m)
		}
		select {
		case _, ok := <-resumed:
			if !ok {
				t.Fatalf("%s: channel closed", what)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: no resume reported", what)
		}
	}
	sleeping := func(what string) {
		t.Helper()
		if m := log.next(t); m != "the system is going to sleep" {
			t.Fatalf("%s: logged %q", what, m)
		}
		quiet(what)
	}

	prepareForSleep(t, logind, true)
	sleeping("going to sleep")
	prepareForSleep(t, logind, false)
	resume("resumed")

	// Anyone else's PrepareForSleep, broadcast or sent to the notifier
	// alone, is not logind's word.
	spoofer := connect(t, addr)
	prepareForSleep(t, spoofer, false)
	notifier := otherName(t, logind, logind, spoofer)
	msg := &dbus.Message{Type: dbus.TypeSignal, Headers: map[dbus.HeaderField]dbus.Variant{
		dbus.FieldPath:        dbus.MakeVariant(logindPath),
		dbus.FieldInterface:   dbus.MakeVariant(logindManager),
		dbus.FieldMember:      dbus.MakeVariant(prepareMember),
		dbus.FieldDestination: dbus.MakeVariant(notifier),
		dbus.FieldSignature:   dbus.MakeVariant(dbus.SignatureOf(false)),
	}, Body: []any{false}}
	if call := spoofer.Send(msg, nil); call.Err != nil {
		t.Fatal(call.Err)
	}
	flush(t, spoofer)
	prepareForSleep(t, logind, true)
	sleeping("after the spoofs")

	// logind restarts, under a new unique name: the new one counts, and
	// the old connection's word no longer does.
	if _, err := logind.ReleaseName(logindName); err != nil {
		t.Fatal(err)
	}
	restarted := connect(t, addr, logindName)
	prepareForSleep(t, logind, false)
	flush(t, logind)
	prepareForSleep(t, restarted, true)
	sleeping("the old logind")
	prepareForSleep(t, restarted, false)
	resume("the restarted logind")

	cancel()
	select {
	case _, ok := <-resumed:
		if ok {
			t.Fatal("a resume after the context ended")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the channel stayed open after the context ended")
	}
}

// otherName is the unique name on the bus that none of conns has.
func otherName(t *testing.T, ask *dbus.Conn, conns ...*dbus.Conn) string {
	t.Helper()
	var names []string
	if err := ask.BusObject().Call("org.freedesktop.DBus.ListNames", 0).Store(&names); err != nil {
		t.Fatal(err)
	}
	var mine []string
	for _, c := range conns {
		mine = append(mine, c.Names()[0])
	}
	var others []string
	for _, n := range names {
		if strings.HasPrefix(n, ":") && !slices.Contains(mine, n) {
			others = append(others, n)
		}
	}
	if len(others) != 1 {
		t.Fatalf("unique names besides the test's: %v", others)
	}
	return others[0]
}

func TestResumedWithoutLogind(t *testing.T) {
	addr, _ := startBus(t)
	_, err := New(Options{DBusAddress: addr}).Resumed(t.Context())
	if err == nil || !strings.Contains(err.Error(), "systemd-logind is not running, nor can the bus start it") {
		t.Fatalf("Resumed without logind: %v", err)
	}
	t.Log(err)
}

func TestResumedWithoutBus(t *testing.T) {
	_, err := New(Options{DBusAddress: "unix:path=" + filepath.Join(t.TempDir(), "none")}).Resumed(t.Context())
	if err == nil || !strings.Contains(err.Error(), "connect to D-Bus") {
		t.Fatalf("Resumed without a bus: %v", err)
	}
	t.Log(err)
}

// Losing the bus does not end the notifications: the notifier
// subscribes again once the bus is back, here a new dbus-daemon at the
// same address, and reports the resumes logind announces there.
func TestResumedSurvivesLosingTheBus(t *testing.T) {
	dir := t.TempDir()
	addr, kill := startBusIn(t, dir)
	connect(t, addr, logindName)
	log := make(logs, 64)
	n := New(Options{DBusAddress: "unix:path=" + filepath.Join(dir, "bus"), Logger: slog.New(log)})
	n.retryFirst, n.retryMax = 10*time.Millisecond, 50*time.Millisecond
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	resumed, err := n.Resumed(ctx)
	if err != nil {
		t.Fatal(err)
	}
	kill()
	log.until(t, "lost the D-Bus connection")
	log.until(t, "reconnecting to D-Bus failed")
	log.until(t, "reconnecting to D-Bus failed")
	select {
	case _, ok := <-resumed:
		t.Fatalf("without a bus: received %v", ok)
	default:
	}

	addr, _ = startBusIn(t, dir)
	logind := connect(t, addr, logindName)
	log.until(t, "reconnected to D-Bus")
	prepareForSleep(t, logind, false)
	log.until(t, "the system resumed from sleep")
	select {
	case _, ok := <-resumed:
		if !ok {
			t.Fatal("the channel closed")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no resume reported from the new bus")
	}

	cancel()
	select {
	case _, ok := <-resumed:
		if ok {
			t.Fatal("a resume after the context ended")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the channel stayed open after the context ended")
	}
}

// While the bus stays away the notifier keeps trying, and ends with its
// context, closing the channel.
func TestResumedRetriesUntilTheContextEnds(t *testing.T) {
	addr, kill := startBus(t)
	connect(t, addr, logindName)
	log := make(logs, 64)
	n := New(Options{DBusAddress: addr, Logger: slog.New(log)})
	n.retryFirst, n.retryMax = 10*time.Millisecond, 20*time.Millisecond
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	resumed, err := n.Resumed(ctx)
	if err != nil {
		t.Fatal(err)
	}
	kill()
	log.until(t, "lost the D-Bus connection")
	for range 3 {
		log.until(t, "reconnecting to D-Bus failed")
	}
	select {
	case _, ok := <-resumed:
		t.Fatalf("without a bus: received %v", ok)
	default:
	}
	cancel()
	select {
	case _, ok := <-resumed:
		if ok {
			t.Fatal("a resume from a bus that is gone")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the channel stayed open after the context ended")
	}
}
