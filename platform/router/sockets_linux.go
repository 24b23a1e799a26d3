//go:build linux

package router

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// Why abort sockets at all: Linux keeps a TCP socket whose local address
// was deleted, but will not route anything from that address any more, so
// the socket falls silent. A download waiting for data waits until the
// application gives up, minutes later. Each tunnel's addresses come from
// its exit, so a mode switch deletes the old tunnel's addresses, and the
// connections on them can never work again (they must not: carried into
// the other mode they would link its identity to the old one). Aborting
// them (sock_diag's SOCK_DESTROY, what `ss -K` does) fails them at once
// with ECONNABORTED, and the applications connect again from the new
// addresses. The reset the kernel tries to send on abort has no route from
// a deleted address, so nothing leaves.

// abortTCP aborts every TCP socket whose local address is in addrs and
// returns how many it aborted. diag is a sock_diag socket of the router's
// network namespace.
func abortTCP(h *netlink.Handle, diag *nl.SocketHandle, addrs map[netip.Addr]bool) (int, error) {
	if len(addrs) == 0 {
		return 0, nil
	}
	n := 0
	var errs []error
	for _, fam := range []uint8{unix.AF_INET, unix.AF_INET6} {
		socks, err := h.SocketDiagTCP(fam)
		if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
			errs = append(errs, fmt.Errorf("router: list TCP sockets: %w", err))
			continue
		}
		for _, s := range socks {
			local, ok := netip.AddrFromSlice(s.ID.Source)
			if !ok || !addrs[local.Unmap()] {
				continue
			}
			req := nl.NewNetlinkRequest(nl.SOCK_DESTROY, unix.NLM_F_ACK)
			req.Sockets = map[int]*nl.SocketHandle{unix.NETLINK_INET_DIAG: diag}
			req.AddData(&destroyRequest{family: fam, id: s.ID})
			// A socket that closed meanwhile is not an error.
			if _, err := req.Execute(unix.NETLINK_INET_DIAG, 0); err != nil && !errors.Is(err, unix.ENOENT) {
				errs = append(errs, fmt.Errorf("router: abort TCP socket %v:%d: %w", local, s.ID.SourcePort, err))
				continue
			}
			n++
		}
	}
	return n, errors.Join(errs...)
}

// destroyRequest is struct inet_diag_req_v2 naming one TCP socket, the
// form SOCK_DESTROY takes. The library's own SocketDestroy knows IPv4
// only.
type destroyRequest struct {
	family uint8
	id     netlink.SocketID
}

const sizeofDestroyRequest = 56

// Serialize lays the request out as the kernel reads it: ports and
// addresses in network order, the rest in the host's.
func (r *destroyRequest) Serialize() []byte {
	b := make([]byte, sizeofDestroyRequest)
	b[0], b[1] = r.family, unix.IPPROTO_TCP
	binary.NativeEndian.PutUint32(b[4:], 0xffffffff) // any state
	binary.BigEndian.PutUint16(b[8:], r.id.SourcePort)
	binary.BigEndian.PutUint16(b[10:], r.id.DestinationPort)
	if r.family == unix.AF_INET {
		copy(b[12:28], r.id.Source.To4())
		copy(b[28:44], r.id.Destination.To4())
	} else {
		copy(b[12:28], r.id.Source.To16())
		copy(b[28:44], r.id.Destination.To16())
	}
	binary.NativeEndian.PutUint32(b[44:], r.id.Interface)
	binary.NativeEndian.PutUint32(b[48:], r.id.Cookie[0])
	binary.NativeEndian.PutUint32(b[52:], r.id.Cookie[1])
	return b
}

// Len is the request's length.
func (r *destroyRequest) Len() int { return sizeofDestroyRequest }
