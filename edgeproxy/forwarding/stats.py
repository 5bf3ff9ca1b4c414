"""Plain counters per service port, read by the daemon's prometheus collector and status."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass
class ServiceStats:
    active_connections: int = 0      # TCP connections relayed or dialing right now
    connections_total: int = 0       # TCP connections accepted
    bytes_in: int = 0                # client -> endpoint (TCP and UDP payload)
    bytes_out: int = 0               # endpoint -> client
    dial_failures_total: int = 0     # failed dial attempts (each timeout/refusal counts)
    connections_reset_total: int = 0  # clients reset because no endpoint could be reached
    udp_sessions: int = 0            # UDP client sessions open right now
    udp_sessions_total: int = 0
    udp_datagrams_in: int = 0
    udp_datagrams_out: int = 0
    udp_dropped_total: int = 0       # datagrams dropped (no endpoint, errors)
    udp_evicted_total: int = 0       # idlest sessions closed to make room at the session bound
    accept_errors_total: int = 0     # EMFILE/ENFILE/ENOBUFS on accept (backed off)
    accept_paused_total: int = 0     # times accepting paused at the connection limit
    idle_closed_total: int = 0       # TCP connections closed by the idle timeout
    draining: int = 0                # 1 while a removed service drains
    draining_closed: int = 0         # 1 once a removed service's drain ended

    def snapshot(self) -> "ServiceStats":
        return replace(self)
