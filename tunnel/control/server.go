package control

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/mixvpn/mixvpn/tunnel/control/controlpb"
)

// Daemon is what the Server needs from mixvpnd. Methods that take a context
// may block for as long as it allows; the others must return at once.
type Daemon interface {
	Status() Status
	// Connect starts connecting. It may return before the tunnel is up,
	// reporting progress as events, but not before the state is at least
	// StateConnecting, so that a client asking right after it returns does
	// not mistake an earlier error or disconnection for the outcome. A
	// zero mode and empty entry or exit mean the settings' choice.
	Connect(ctx context.Context, mode Mode, entry, exit string) error
	Disconnect(ctx context.Context) error
	// SetMode switches mode, reconnecting if connected. Like Connect it
	// may return before the tunnel is up in the new mode, but not before
	// the status shows the new mode, so that a client waiting for the
	// switch is not misled by the status before it.
	SetMode(ctx context.Context, mode Mode) error
	Gateways(ctx context.Context) ([]Gateway, error)
	Settings() Settings
	// SetSettings stores settings the Server has already validated.
	SetSettings(ctx context.Context, s Settings) error
	// Subscribe returns status changes until cancel is called; the daemon
	// closes events if it stops.
	Subscribe() (events <-chan Event, cancel func())
	// Stats returns counters since the tunnel last connected.
	Stats() Stats
}

// Defaults for Config.
const (
	DefaultStatsInterval = time.Second
	// MinStatsInterval and MaxStatsInterval bound what a client may ask
	// for, so that no client can make the daemon spin.
	MinStatsInterval = 100 * time.Millisecond
	MaxStatsInterval = time.Hour
	// maxMask bounds update_mask: there are only a dozen settings.
	maxMask = 64
	// stopGrace is how long Serve waits for calls in flight when it stops.
	stopGrace = 5 * time.Second
)

// Config configures a Server.
type Config struct {
	Daemon Daemon
	// StatsInterval is WatchStats' interval when the client gives none;
	// default DefaultStatsInterval.
	StatsInterval time.Duration
	// Version is reported as the daemon's version; default the main
	// module's version from the build info.
	Version string
	Logger  *slog.Logger
}

// Server serves the Control API for a Daemon.
type Server struct {
	cfg Config
	log *slog.Logger
	// settingsMu makes SetSettings' read-merge-write atomic, so that two
	// clients changing different settings do not undo each other.
	settingsMu sync.Mutex
}

// NewServer makes a Server; Serve runs it.
func NewServer(cfg Config) (*Server, error) {
	if cfg.Daemon == nil {
		return nil, errors.New("control: no Daemon")
	}
	if cfg.StatsInterval == 0 {
		cfg.StatsInterval = DefaultStatsInterval
	}
	if cfg.StatsInterval < MinStatsInterval || cfg.StatsInterval > MaxStatsInterval {
		return nil, fmt.Errorf("control: stats interval %v out of range %v to %v", cfg.StatsInterval, MinStatsInterval, MaxStatsInterval)
	}
	if cfg.Version == "" {
		cfg.Version = buildVersion()
	}
	s := &Server{cfg: cfg, log: cfg.Logger}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	return s, nil
}

func buildVersion() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok || bi.Main.Version == "" {
		return "(devel)"
	}
	return bi.Main.Version
}

// Serve answers calls on l until ctx is done, then ends the watch streams,
// waits a little for calls in flight, and closes l. It returns nil after
// ctx is done, or the error that stopped the listener.
func (s *Server) Serve(ctx context.Context, l *Listener) error {
	stop := make(chan struct{})
	gs := grpc.NewServer(
		grpc.Creds(peerCredentials{}),
		grpc.ChainUnaryInterceptor(l.access.unaryInterceptor(s.log)),
		grpc.ChainStreamInterceptor(l.access.streamInterceptor(s.log)),
	)
	pb.RegisterControlServer(gs, &service{srv: s, stop: stop})

	served := make(chan error, 1)
	go func() { served <- gs.Serve(l) }()
	select {
	case err := <-served:
		close(stop)
		gs.Stop()
		return fmt.Errorf("control: serve: %w", err)
	case <-ctx.Done():
	}
	close(stop)
	graceful := make(chan struct{})
	go func() {
		gs.GracefulStop()
		close(graceful)
	}()
	t := time.NewTimer(stopGrace)
	defer t.Stop()
	select {
	case <-graceful:
	case <-t.C:
		s.log.Warn("control: calls still running at stop, cutting them off")
		gs.Stop()
		<-graceful
	}
	<-served
	return nil
}

// service implements the API for one Serve; stop ends its watch streams.
type service struct {
	pb.UnimplementedControlServer
	srv  *Server
	stop <-chan struct{}
}

func (s *service) daemon() Daemon { return s.srv.cfg.Daemon }

func (s *service) GetStatus(context.Context, *pb.GetStatusRequest) (*pb.Status, error) {
	st := s.daemon().Status()
	st.DaemonVersion = s.srv.cfg.Version
	return StatusToProto(st), nil
}

func (s *service) Connect(ctx context.Context, req *pb.ConnectRequest) (*pb.ConnectResponse, error) {
	mode := ModeFromProto(req.GetMode())
	if mode != ModeUnspecified {
		if err := validateMode("mode", mode); err != nil {
			return nil, s.grpcError("Connect", err)
		}
	}
	if err := validateEntryExit(req.GetEntry(), req.GetExit()); err != nil {
		return nil, s.grpcError("Connect", err)
	}
	if err := s.daemon().Connect(ctx, mode, req.GetEntry(), req.GetExit()); err != nil {
		return nil, s.grpcError("Connect", err)
	}
	return &pb.ConnectResponse{}, nil
}

func (s *service) Disconnect(ctx context.Context, _ *pb.DisconnectRequest) (*pb.DisconnectResponse, error) {
	if err := s.daemon().Disconnect(ctx); err != nil {
		return nil, s.grpcError("Disconnect", err)
	}
	return &pb.DisconnectResponse{}, nil
}

func (s *service) SetMode(ctx context.Context, req *pb.SetModeRequest) (*pb.SetModeResponse, error) {
	mode := ModeFromProto(req.GetMode())
	if err := validateMode("mode", mode); err != nil {
		return nil, s.grpcError("SetMode", err)
	}
	if err := s.daemon().SetMode(ctx, mode); err != nil {
		return nil, s.grpcError("SetMode", err)
	}
	return &pb.SetModeResponse{}, nil
}

func (s *service) ListGateways(ctx context.Context, _ *pb.ListGatewaysRequest) (*pb.ListGatewaysResponse, error) {
	gws, err := s.daemon().Gateways(ctx)
	if err != nil {
		return nil, s.grpcError("ListGateways", err)
	}
	resp := &pb.ListGatewaysResponse{Gateways: make([]*pb.Gateway, len(gws))}
	for i, g := range gws {
		resp.Gateways[i] = GatewayToProto(g)
	}
	return resp, nil
}

func (s *service) GetSettings(context.Context, *pb.GetSettingsRequest) (*pb.Settings, error) {
	return SettingsToProto(s.daemon().Settings()), nil
}

func (s *service) SetSettings(ctx context.Context, req *pb.SetSettingsRequest) (*pb.Settings, error) {
	if n := len(req.GetUpdateMask()); n > maxMask {
		return nil, s.grpcError("SetSettings", invalidf("update_mask has %d entries: at most %d", n, maxMask))
	}
	upd, err := SettingsFromProto(req.GetSettings())
	if err != nil {
		return nil, s.grpcError("SetSettings", err)
	}
	s.srv.settingsMu.Lock()
	defer s.srv.settingsMu.Unlock()
	merged, err := applyMask(s.daemon().Settings(), upd, req.GetUpdateMask())
	if err != nil {
		return nil, s.grpcError("SetSettings", err)
	}
	if err := merged.Validate(); err != nil {
		return nil, s.grpcError("SetSettings", err)
	}
	if err := s.daemon().SetSettings(ctx, merged); err != nil {
		return nil, s.grpcError("SetSettings", err)
	}
	return SettingsToProto(s.daemon().Settings()), nil
}

func (s *service) WatchEvents(_ *pb.WatchEventsRequest, stream grpc.ServerStreamingServer[pb.Event]) error {
	ctx := stream.Context()
	// Subscribe before reading the status, so that no change falls between
	// the snapshot and the first event.
	events, cancel := s.daemon().Subscribe()
	defer cancel()
	st := s.daemon().Status()
	st.DaemonVersion = s.srv.cfg.Version
	if err := stream.Send(EventToProto(Event{Status: st, Time: time.Now()})); err != nil {
		return err
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-s.stop:
			return status.Error(codes.Unavailable, "mixvpnd is stopping")
		case ev, ok := <-events:
			if !ok {
				return status.Error(codes.Unavailable, "mixvpnd is stopping")
			}
			ev.Status.DaemonVersion = s.srv.cfg.Version
			if err := stream.Send(EventToProto(ev)); err != nil {
				return err
			}
		}
	}
}

// statsInterval checks a requested WatchStats interval.
func (s *service) statsInterval(req *pb.WatchStatsRequest) (time.Duration, error) {
	ms := req.GetIntervalMs()
	if ms == 0 {
		return s.srv.cfg.StatsInterval, nil
	}
	d := time.Duration(ms) * time.Millisecond
	if d < MinStatsInterval || d > MaxStatsInterval {
		return 0, invalidf("interval_ms %d is out of range: want %d to %d", ms, MinStatsInterval.Milliseconds(), MaxStatsInterval.Milliseconds())
	}
	return d, nil
}

func (s *service) WatchStats(req *pb.WatchStatsRequest, stream grpc.ServerStreamingServer[pb.Stats]) error {
	interval, err := s.statsInterval(req)
	if err != nil {
		return s.grpcError("WatchStats", err)
	}
	ctx := stream.Context()
	t := time.NewTicker(interval)
	defer t.Stop()
	var prev StatsSample
	for {
		cur := StatsSample{Stats: s.daemon().Stats(), Time: time.Now()}
		if !prev.Time.IsZero() {
			dt := cur.Time.Sub(prev.Time).Seconds()
			cur.RateIn = rate(prev.BytesIn, cur.BytesIn, dt)
			cur.RateOut = rate(prev.BytesOut, cur.BytesOut, dt)
		}
		if err := stream.Send(StatsToProto(cur)); err != nil {
			return err
		}
		prev = cur
		select {
		case <-ctx.Done():
			return nil
		case <-s.stop:
			return status.Error(codes.Unavailable, "mixvpnd is stopping")
		case <-t.C:
		}
	}
}

// rate is bytes per second between two counter readings; a counter that
// went down was reset by a reconnect, so everything since counts.
func rate(prev, cur uint64, seconds float64) float64 {
	if seconds <= 0 {
		return 0
	}
	if cur < prev {
		return float64(cur) / seconds
	}
	return float64(cur-prev) / seconds
}

// grpcError gives a daemon or validation error the code clients act on.
func (s *service) grpcError(method string, err error) error {
	if _, ok := status.FromError(err); ok {
		return err
	}
	switch {
	case errors.Is(err, ErrInvalid):
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.Is(err, ErrNotFound):
		return status.Error(codes.NotFound, err.Error())
	case errors.Is(err, ErrState):
		return status.Error(codes.FailedPrecondition, err.Error())
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, err.Error())
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, err.Error())
	}
	s.srv.log.Error("control: daemon failed", "method", method, "err", err)
	return status.Error(codes.Internal, err.Error())
}
