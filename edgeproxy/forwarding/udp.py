"""UDP forwarding for one service port: per-client sessions, whole datagrams, right source.

* A session is keyed by the client's (ip, port) and owns an upstream socket ``connect()``ed to
  the endpoint chosen for it (so the kernel filters replies to that endpoint and the balancer's
  affinity/hash applies per client). It ends after ``timeout`` seconds without traffic either
  way (monotonic clock, checked by `sweep`).
* Replies are sent from the listener socket, which is bound to the listen address: the source
  is exactly the address the DNAT rule sent the client to, and conntrack's un-NAT turns it back
  into the VIP the client asked. (A wildcard-bound socket would answer from whatever address
  routing picks and the client would drop the reply.)
* Datagrams up to 65,507 bytes (IPv4) / 65,527 (IPv6) travel whole: one 64 KiB receive buffer
  reused for every datagram (kube-proxy and EdgeMesh read 4 KiB and truncate).
* Sessions are bounded. A new client beyond the bound evicts the least recently active session
  (counted in ``udp_evicted_total``), like a full conntrack table dropping its oldest flows, so
  stale sessions (a resolver's old source ports) never starve a new DNS client. Sessions sit in
  an OrderedDict in order of last activity (``move_to_end`` per datagram, O(1) in C, small next
  to the two system calls a datagram costs): the idlest is the first, so eviction is O(1) and
  the idle sweep stops at the first session still within its timeout.
* Everything runs in io-watcher callbacks: no greenlet per session, few allocations per datagram.
"""

from __future__ import annotations

import _socket
import errno
import logging
import time
from collections import OrderedDict


from edgeproxy.forwarding.balancer import Balancer, NoEndpointsError
from edgeproxy.forwarding.budget import SocketBudget
from edgeproxy.forwarding.health import error_text
from edgeproxy.forwarding.service import PortService
from edgeproxy.forwarding.stats import ServiceStats
from edgeproxy.model import DEFAULT_UDP_TIMEOUT_SECONDS, Endpoint

log = logging.getLogger(__name__)

MAX_DATAGRAM = 65535
# What the kernel reports on a connected UDP socket after an ICMP error from the path.
_ICMP_ERRORS = frozenset((errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH,
                          errno.EHOSTDOWN, errno.ENETDOWN))
RECV_BATCH = 64  # datagrams handled per readiness callback before yielding to other sockets
_READ = 1
_SOCK_NONBLOCK = getattr(_socket, "SOCK_NONBLOCK", 0)


class Session:
    __slots__ = ("service", "client", "listener", "sock", "watcher", "last_active", "endpoint",
                 "key")

    def __init__(self, service: "UdpService", client: tuple, listener: _socket.socket,
                 sock: _socket.socket, endpoint: Endpoint | None = None,
                 key: tuple | None = None) -> None:
        self.service = service
        self.client = client
        self.listener = listener
        self.sock = sock
        self.endpoint = endpoint
        # In `sessions`: the client address, tagged for the second listener (the same client
        # port may talk to a cluster IP and an external IP of the port at once).
        self.key = client if key is None else key
        self.watcher = service.loop.io(sock.fileno(), _READ)
        self.last_active = time.monotonic()
        self.watcher.start(service._on_reply, self)

    def close(self) -> None:
        self.watcher.stop()
        self.watcher.close()
        self.sock.close()


class UdpService(PortService):
    """Listeners and sessions of one UDP service port. Every session socket counts against
    the process-wide descriptor budget, which may evict this service's idlest session to make
    room for another service's client; ICMP errors on session sockets count against the
    endpoint."""

    def __init__(self, name: str, balancer: Balancer, stats: ServiceStats,
                 timeout: float = DEFAULT_UDP_TIMEOUT_SECONDS, max_sessions: int = 10000,
                 budget: SocketBudget | None = None) -> None:
        super().__init__(name, balancer, stats, budget, self._on_datagram)
        self.timeout = timeout
        self.max_sessions = max_sessions
        # Least recently active first: every datagram moves its session to the end.
        self.sessions: OrderedDict[tuple, Session] = OrderedDict()
        self._buf = bytearray(MAX_DATAGRAM)
        self._view = memoryview(self._buf)
        self.accepting = False

    def add_listener(self, sock: _socket.socket, second: bool = False) -> None:
        self.listeners.add(sock, watch=self.accepting, second=second)

    def close_family(self, family: int) -> int:
        """Close the listeners of one address family (the service lost its last VIP of that
        family) and the sessions answering through them: their replies could not be sent from
        the right address any more. Returns how many listeners were closed."""
        return self._end_sessions_of(self.listeners.remove_family(family))

    def close_second(self) -> int:
        """Close the second listener and the sessions answering through it."""
        self.second_balancer = None
        return self._end_sessions_of(self.listeners.remove_second())

    def _end_sessions_of(self, closed: list[_socket.socket]) -> int:
        """Close the sessions that answered through ``closed`` listeners; returns how many
        listeners those were."""
        gone = set(closed)
        for session in [s for s in self.sessions.values() if s.listener in gone]:
            self._close(session)
        return len(closed)

    def start(self) -> None:
        # Registered while serving only (unregistered in close_listeners): a service whose
        # listeners could not be bound never starts and must not stay on the budget's list.
        self.budget.register_udp(self)
        self.accepting = True
        self.listeners.watch()

    def close_listeners(self) -> None:
        """Removal: UDP has nothing to drain, so sessions end with the listeners."""
        self.accepting = False
        self.listeners.close()
        self.abort_all()
        self.budget.unregister_udp(self)

    def abort_all(self) -> None:
        for session in list(self.sessions.values()):
            session.close()
        self.budget.give(len(self.sessions))
        self.sessions.clear()
        self.stats.udp_sessions = 0

    @property
    def active(self) -> int:
        return len(self.sessions)

    # -- client -> endpoint --------------------------------------------------------------------

    def _on_datagram(self, lsock: _socket.socket) -> None:
        buf, view, sessions, stats = self._buf, self._view, self.sessions, self.stats
        now = time.monotonic()
        second = self.listeners.is_second(lsock)
        for _ in range(RECV_BATCH):
            try:
                n, addr = lsock.recvfrom_into(buf)
            except BlockingIOError:
                return
            except OSError:
                continue
            key = ("second", *addr) if second else addr
            session = sessions.get(key)
            if session is None:
                session = self._open(lsock, addr, key, second)
                if session is None:
                    stats.udp_dropped_total += 1
                    continue
            session.last_active = now
            sessions.move_to_end(key)
            try:
                session.sock.send(view[:n])
            except BlockingIOError:
                stats.udp_dropped_total += 1
                continue
            except OSError as exc:
                # ICMP unreachable from the endpoint surfaces here: drop the session so the next
                # datagram picks again (with affinity reset), as a failed dial would for TCP.
                stats.udp_dropped_total += 1
                self._endpoint_error(session, exc)
                continue
            stats.udp_datagrams_in += 1
            stats.bytes_in += n

    def _endpoint_error(self, session: Session, exc: OSError) -> None:
        """The kernel reported an ICMP error for the session's connected socket (refused, host
        or network unreachable): it counts against the endpoint, and the session ends so the
        client's next datagram picks again."""
        self.stats.dial_failures_total += 1
        if session.endpoint is not None and exc.errno in _ICMP_ERRORS:
            self.health.dial_failed(session.endpoint, time.monotonic(),
                                    error_text(exc))
        self._close(session)

    def endpoint_ejected(self, ep: Endpoint) -> int:
        """Close the sessions to an ejected endpoint (their clients' next datagrams pick a
        usable one); returns how many."""
        gone = [s for s in self.sessions.values() if s.endpoint == ep]
        for session in gone:
            self._close(session)
        return len(gone)

    def _open(self, lsock: _socket.socket, addr: tuple, key: tuple | None = None,
              second: bool = False) -> Session | None:
        balancer = self.second_balancer if second and self.second_balancer else self.balancer
        try:
            ep = balancer.next_endpoint(addr[0])
        except NoEndpointsError:
            if balancer.refusing:
                self.stats.refused_no_local_total += 1
            return None
        if len(self.sessions) >= self.max_sessions:
            if not self.sessions:
                return None  # a bound of 0 admits nobody
            self._close(self._idlest())
            self.stats.udp_evicted_total += 1
        if not self.budget.take(1, "udp"):
            return None  # no descriptor to spare, not even by evicting: drop (counted)
        family = _socket.AF_INET6 if ":" in ep.ip else _socket.AF_INET
        try:
            sock = _socket.socket(family, _socket.SOCK_DGRAM | _SOCK_NONBLOCK)
        except OSError as exc:  # out of descriptors: drop this datagram, keep serving others
            self.budget.give(1)
            log.warning("%s: cannot open a session socket: %s", self.name, exc)
            return None
        try:
            sock.connect((ep.ip, ep.port))
        except OSError as exc:
            sock.close()
            self.budget.give(1)
            self.stats.dial_failures_total += 1
            self.health.dial_failed(ep, time.monotonic(),
                                    error_text(exc))
            log.info("%s: cannot reach %s: %s", self.name, ep, exc)
            return None
        session = Session(self, addr, lsock, sock, ep, key)
        self.sessions[session.key] = session
        self.stats.udp_sessions = len(self.sessions)
        self.stats.udp_sessions_total += 1
        return session

    # -- endpoint -> client --------------------------------------------------------------------

    def _on_reply(self, session: Session) -> None:
        buf, view, stats = self._buf, self._view, self.stats
        sock, listener, client = session.sock, session.listener, session.client
        session.last_active = time.monotonic()
        if self.sessions.get(session.key) is session:
            self.sessions.move_to_end(session.key)
        replied = False
        for _ in range(RECV_BATCH):
            try:
                n = sock.recv_into(buf)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno in _ICMP_ERRORS:
                    self._endpoint_error(session, exc)
                else:
                    self._close(session)
                return
            if not replied and session.endpoint is not None:
                replied = True
                self.health.reply(session.endpoint)
            try:
                listener.sendto(view[:n], client)
            except OSError:
                stats.udp_dropped_total += 1
                continue
            stats.udp_datagrams_out += 1
            stats.bytes_out += n

    def _close(self, session: Session) -> None:
        if self.sessions.get(session.key) is session:
            del self.sessions[session.key]
            self.budget.give(1)  # once per session, however often it is closed
        session.close()
        self.stats.udp_sessions = len(self.sessions)

    # -- the descriptor budget's view ----------------------------------------------------------
    def idlest_activity(self) -> float | None:
        """When the least recently active session last saw traffic (None: no session)."""
        return next(iter(self.sessions.values())).last_active if self.sessions else None

    def evict_idlest(self) -> bool:
        if not self.sessions:
            return False
        self._close(self._idlest())
        self.stats.udp_evicted_total += 1
        return True

    def _idlest(self) -> Session:
        """The least recently active session (there must be one): the first in order."""
        return next(iter(self.sessions.values()))

    def sweep(self, now: float) -> int:
        """Close sessions idle for longer than the timeout, idlest first: stops at the first
        session still within its timeout instead of looking at every session."""
        closed = 0
        while self.sessions:
            session = self._idlest()
            if now - session.last_active <= self.timeout:
                break
            self._close(session)
            closed += 1
        return closed
