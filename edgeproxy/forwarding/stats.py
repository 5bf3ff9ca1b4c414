"""Plain counters per service port, read by the daemon's prometheus collector and status."""

from __future__ import annotations

from dataclasses import dataclass, field, replace


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
    # Endpoint health (forwarding.health) and selection (forwarding.topology).
    endpoint_ejections_total: int = 0    # endpoints taken out after failures
    endpoint_readmissions_total: int = 0  # endpoints back (a probe answered, back-off over)
    probes_total: int = 0            # connect probes of ejected endpoints
    probe_failures_total: int = 0
    endpoints_ejected: int = 0       # ejected right now
    panic: int = 0                   # 1 while every endpoint is ejected (all are tried)
    refused_no_local_total: int = 0  # clients refused: a Local policy, none on this node

    def snapshot(self) -> "ServiceStats":
        return replace(self)


@dataclass
class EndpointReport:
    """One endpoint as this node sees it, for /status (times in seconds from now)."""

    locality: str  # node, zone or remote (topology.LOCALITIES)
    used: bool  # in a set some listener of the port balances over
    state: str  # healthy, ejected or recovering (forwarding.health)
    consecutive_failures: int = 0
    ejected_for: float | None = None  # seconds until the back-off ends
    ejections: int = 0  # back-offs in a row without a success
    last_error: str | None = None
    slow: bool = False  # a dial has waited unusually long for its answer
    connect_seconds: float | None = None  # smoothed connect time

    def to_dict(self) -> dict:
        out = {"locality": self.locality, "used": self.used, "health": self.state,
               "consecutiveFailures": self.consecutive_failures}
        if self.ejected_for is not None:
            out["ejectedForSeconds"] = round(self.ejected_for, 3)
            out["ejections"] = self.ejections
        if self.last_error:
            out["lastError"] = self.last_error
        if self.slow:
            out["slow"] = True
        if self.connect_seconds is not None:
            out["connectMs"] = round(self.connect_seconds * 1000, 3)
        return out


@dataclass
class PortEndpointsReport:
    """What one service port's listeners balance over on this node, and its endpoints' health."""

    topology_mode: str  # "", PreferSameZone or PreferSameNode (kube-proxy's, from the hints)
    policy: str  # Cluster or Local: the main listener's (cluster IPs) set
    refused: bool  # that set is empty while other nodes have endpoints: clients refused
    second_policy: str | None = None  # the second listener's set, when the port has one
    second_refused: bool = False
    panic: bool = False
    endpoints: dict[str, EndpointReport] = field(default_factory=dict)  # by "ip:port"
