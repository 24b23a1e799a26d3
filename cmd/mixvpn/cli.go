package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/mixvpn/mixvpn/tunnel/control"
	pb "github.com/mixvpn/mixvpn/tunnel/control/controlpb"
)

// socketEnv overrides the default socket path, as --socket does.
const socketEnv = "MIXVPN_SOCKET"

// callTimeout bounds a single request; waiting for a connection to come up
// has its own, longer timeout.
const callTimeout = 15 * time.Second

// notRunningHint is shown when the daemon cannot be reached; it says what
// to do, since "connection refused" does not.
const notRunningHint = "mixvpnd is not running: start it with `sudo systemctl start mixvpnd`"

// permissionHint is shown when the socket refuses the user; it names the
// group that would let them in, as the daemon's own refusal does.
func permissionHint(group string) string {
	return fmt.Sprintf("you are not allowed to talk to mixvpnd: ask an administrator to add you to the %s group (sudo usermod -aG %s $USER) and log in again", group, group)
}

// socketGroup is the group that may open the socket: the socket's, or its
// directory's when the user may not even look inside. A socket left to
// root's group means the daemon's group did not exist when it started;
// the default group is the one to create and join then.
func socketGroup(socket string) string {
	for _, p := range []string{socket, filepath.Dir(socket)} {
		fi, err := os.Stat(p)
		if err != nil {
			continue
		}
		gid, ok := fileGID(fi)
		if !ok || gid == 0 {
			break
		}
		if g, err := user.LookupGroupId(strconv.FormatUint(uint64(gid), 10)); err == nil {
			return g.Name
		}
		break
	}
	return control.DefaultGroup
}

// cliConfig is the outside world of one run.
type cliConfig struct {
	Stdout, Stderr io.Writer
	Getenv         func(string) string
}

// cli is the state shared by the commands of one run.
type cli struct {
	out    io.Writer
	socket string
}

func rootCommand(cfg cliConfig) *cobra.Command {
	c := &cli{out: cfg.Stdout}
	root := &cobra.Command{
		Use:   "mixvpn",
		Short: "Control the mixvpn daemon: connect, disconnect, switch modes, change settings",
		Long: "mixvpn talks to mixvpnd, the privileged daemon that owns the VPN tunnel.\n" +
			"Fast mode nests WireGuard to an exit inside WireGuard to an entry; Anonymous\n" +
			"mode sends every packet through the mixnet with cover traffic.",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(cfg.Stdout)
	root.SetErr(cfg.Stderr)
	def := control.DefaultSocketPath
	if s := cfg.Getenv(socketEnv); s != "" {
		def = s
	}
	root.PersistentFlags().StringVar(&c.socket, "socket", def, "mixvpnd's control socket (env "+socketEnv+")")
	root.AddCommand(
		c.connectCommand(),
		c.disconnectCommand(),
		c.statusCommand(),
		c.modeCommand(),
		c.statsCommand(),
		c.gatewaysCommand(),
		c.settingsCommand(),
		c.versionCommand(),
		proxyCommand(cfg),
	)
	return root
}

// hintError is an error shown with advice; the cause stays reachable.
type hintError struct {
	hint string
	err  error
}

func (e *hintError) Error() string { return e.hint }
func (e *hintError) Unwrap() error { return e.err }

// client connects to the daemon. It dials the socket once first because a
// gRPC client only says "unavailable", while the dial says whether nothing
// is there or the user may not open it.
func (c *cli) client(ctx context.Context) (pb.ControlClient, func(), error) {
	var d net.Dialer
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	conn, err := d.DialContext(ctx, "unix", c.socket)
	if err != nil {
		return nil, nil, dialError(c.socket, err)
	}
	conn.Close()
	client, cc, err := control.Dial(c.socket)
	if err != nil {
		return nil, nil, err
	}
	return client, func() { cc.Close() }, nil
}

func dialError(socket string, err error) error {
	switch {
	case errors.Is(err, syscall.ENOENT), errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ENOTDIR):
		return &hintError{hint: fmt.Sprintf("%s (nothing is listening on %s)", notRunningHint, socket), err: err}
	case errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EPERM):
		return &hintError{hint: permissionHint(socketGroup(socket)), err: err}
	}
	return fmt.Errorf("connecting to mixvpnd on %s: %w", socket, err)
}

// explain turns an RPC error into what the user should read: the daemon's
// own message for requests it rejected, advice for access problems.
func (c *cli) explain(err error) error {
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	switch st.Code() {
	case codes.OK:
		return nil
	case codes.Unavailable:
		return &hintError{hint: fmt.Sprintf("%s (no answer on %s)", notRunningHint, c.socket), err: err}
	case codes.PermissionDenied:
		// The daemon names its group, which may not be mixvpn.
		return &hintError{hint: st.Message(), err: err}
	case codes.InvalidArgument, codes.NotFound, codes.FailedPrecondition:
		return &hintError{hint: st.Message(), err: err}
	case codes.Canceled:
		return &hintError{hint: "cancelled", err: err}
	case codes.DeadlineExceeded:
		return &hintError{hint: "mixvpnd did not answer in time", err: err}
	}
	return &hintError{hint: fmt.Sprintf("mixvpnd: %s", st.Message()), err: err}
}

// call runs one request with a timeout and explains its error.
func (c *cli) call(ctx context.Context, f func(context.Context, pb.ControlClient) error) error {
	client, closeFn, err := c.client(ctx)
	if err != nil {
		return err
	}
	defer closeFn()
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	return c.explain(f(ctx, client))
}

// waitState runs act and then waits until the daemon gets where act took
// it: until done, which act returns given the status before it ran, says
// so, or the daemon reports StateError. A nil done means there is nothing
// to wait for. Watching starts before act so that no change is missed;
// its first event is the status before act.
func (c *cli) waitState(ctx context.Context, timeout time.Duration, act func(ctx context.Context, client pb.ControlClient, before control.Status) (done func(control.Status) bool, err error)) (control.Status, error) {
	client, closeFn, err := c.client(ctx)
	if err != nil {
		return control.Status{}, err
	}
	defer closeFn()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	events, err := client.WatchEvents(ctx, &pb.WatchEventsRequest{})
	if err != nil {
		return control.Status{}, c.explain(err)
	}
	first, err := events.Recv()
	if err != nil {
		return control.Status{}, c.explain(err)
	}
	done, err := act(ctx, client, control.StatusFromProto(first.GetStatus()))
	if err != nil {
		return control.Status{}, c.explain(err)
	}
	// A daemon that had nothing to do sends no event: ask.
	st, err := client.GetStatus(ctx, &pb.GetStatusRequest{})
	if err != nil {
		return control.Status{}, c.explain(err)
	}
	for {
		s := control.StatusFromProto(st)
		// With nothing to wait for, an error from before is not news.
		if done == nil {
			return s, nil
		}
		if s.State == control.StateError {
			return s, fmt.Errorf("mixvpnd: %s", s.Error)
		}
		if done(s) {
			return s, nil
		}
		ev, err := events.Recv()
		if status.Code(err) == codes.DeadlineExceeded || errors.Is(ctx.Err(), context.DeadlineExceeded) || endedAtDeadline(ctx, err) {
			still := s.State.String()
			if s.State == control.StateReconnecting && s.Error != "" {
				still += " (" + s.Error + ")"
			}
			return s, fmt.Errorf("still %s after %v: see `mixvpn status --watch`", still, timeout)
		}
		if err != nil {
			return s, c.explain(err)
		}
		st = ev.GetStatus()
	}
}

// endedAtDeadline says whether err is the stream's clean end that the
// daemon sends when the deadline it was given passes: it can arrive a
// moment before this side's own timer fires.
func endedAtDeadline(ctx context.Context, err error) bool {
	d, ok := ctx.Deadline()
	return errors.Is(err, io.EOF) && ok && time.Until(d) < 100*time.Millisecond
}

// inState is a done for waitState: the daemon is in state want.
func inState(want control.State) func(control.Status) bool {
	return func(s control.Status) bool { return s.State == want }
}
