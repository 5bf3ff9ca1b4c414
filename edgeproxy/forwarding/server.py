"""`ProxyServer`: the forwarding side of the desired state, and what the daemon may rely on.

``reconcile(ports)`` turns ``Mapping[ServicePortKey, ServicePort]`` into listeners on proxy
ports and returns the proxy port of every key it serves (docs/forwarding.md); ``stats()`` gives
a `ServiceStats` per key, draining ones included; ``sync_routes(vips)`` keeps the host routes an
offline node needs; ``start``/``stop(grace)`` bracket it all:

* new key: allocate a port (stable across restarts, see `ports`), bind the listen address of
  every family the service has VIPs in on that same port, start accepting;
* changed key: endpoints, policy and affinity are applied to its balancer in place; open
  connections and UDP sessions are not touched;
* removed key: TCP stops accepting at once and open connections drain for ``drain_grace``
  seconds before being reset; UDP sessions end with the listener.

One housekeeping greenlet enforces idle timeouts, ends drains and expires affinity pins.

Everything serving depends on is kept, not only set up: `verify` (the daemon calls it every
--iptables-sync-period) finds a deleted or downed listen interface, a lost listen address or
a closed listener, and puts it back (the interface with its addresses and its host routes,
the listener on the same port); `health_problems` says, live, what is broken right now.
"""

from __future__ import annotations

import _socket
import errno
import logging
import time
from pathlib import Path
from typing import Iterable, Iterator, Mapping

import gevent

from edgeproxy.forwarding import listen as listen_mod
from edgeproxy.forwarding.balancer import Balancer
from edgeproxy.forwarding.budget import SocketBudget, pipes_for, soft_nofile
from edgeproxy.forwarding.health import EJECTED, EndpointHealth, HealthSettings
from edgeproxy.forwarding.prober import DEFAULT_CONCURRENCY, HealthMonitor
from edgeproxy.forwarding.ports import (
    DEFAULT_PORT_RANGE,
    STATE_FILE_NAME,
    PortAllocator,
    PortExhaustedError,
    PortRange,
    reserve_ports,
    second_listener_name,
)
from edgeproxy.forwarding.splice import PipePool
from edgeproxy.forwarding.stats import EndpointReport, PortEndpointsReport, ServiceStats
from edgeproxy.forwarding.tcp import TcpService
from edgeproxy.forwarding.topology import NodeIdentity, PortSelection, locality, select
from edgeproxy.forwarding.udp import UdpService
from edgeproxy.model import (DEFAULT_UDP_TIMEOUT_SECONDS, ListenAddresses, Protocol, ServicePort,
                             ServicePortKey)

log = logging.getLogger(__name__)

LISTEN_BACKLOG = 4096
HOUSEKEEPING_PERIOD = 1.0


def _family_name(family: int) -> str:
    return "IPv6" if family == _socket.AF_INET6 else "IPv4"


def _needs_v6(sp: ServicePort) -> bool:
    return any(":" in ip for ip in sp.vips)


def _needs_v4(sp: ServicePort) -> bool:
    return not sp.vips or any(":" not in ip for ip in sp.vips)


class ProxyServer:
    """Listeners, relays and balancers for every proxied service port."""

    def __init__(
        self,
        listen: ListenAddresses,
        port_range: PortRange | None = None,
        state_dir: Path = Path("/run/edgeproxy"),
        udp_timeout: float = DEFAULT_UDP_TIMEOUT_SECONDS,
        tcp_idle_timeout: float | None = None,
        drain_grace: float = 30.0,
        max_connections_per_service: int = 10000,
        manage_interface: bool = True,
        *,
        reserve_port_range: bool | None = None,
        max_udp_sessions_per_service: int | None = None,
        use_splice: bool = True,
        dial_timeouts: tuple[float, ...] | None = None,
        node: NodeIdentity | None = None,
        locality_aware: bool = True,
        health: HealthSettings | None = None,
        probe_concurrency: int = DEFAULT_CONCURRENCY,
    ) -> None:
        self.listen = listen
        self.port_range = DEFAULT_PORT_RANGE if port_range is None else port_range
        self.state_dir = Path(state_dir)
        self.udp_timeout = udp_timeout
        self.tcp_idle_timeout = tcp_idle_timeout
        self.drain_grace = drain_grace
        self.max_connections = max_connections_per_service
        self.max_udp_sessions = max_udp_sessions_per_service or max_connections_per_service
        self.manage_interface = manage_interface
        # Reserving ports writes a sysctl of the current netns: only when we own the node setup.
        self.reserve_port_range = manage_interface if reserve_port_range is None else (
            reserve_port_range)
        self.dial_timeouts = dial_timeouts
        # One descriptor budget for every listener's connections and sessions (budget.py).
        limit = soft_nofile()
        self.budget = SocketBudget.from_rlimit(limit)
        self.pipes = PipePool(max_pipes=pipes_for(limit))
        self.pipes.enabled = self.pipes.enabled and use_splice
        self.allocator = PortAllocator(self.port_range, self.state_dir / STATE_FILE_NAME)
        # Which endpoints this node uses and which of them answer (docs/endpoints.md).
        self.node = node or NodeIdentity()
        self.locality_aware = locality_aware
        self.health_settings = health or HealthSettings()
        self.monitor = HealthMonitor(probe_concurrency, self.health_settings.probe_timeout,
                                     self.budget)
        self._selections: dict[ServicePortKey, PortSelection] = {}
        self.routes = listen_mod.RouteKeeper(listen)
        self.ipv6_ready = bool(listen.ipv6) and not manage_interface
        self.interface_owned = False  # created or adopted by us: removed on stop
        self.repairs_total = 0  # data-path repairs (interface, addresses, listeners)
        self._services: dict[ServicePortKey, TcpService | UdpService] = {}
        self._ports: dict[ServicePortKey, int] = {}
        # Second listeners (externalTrafficPolicy / internalTrafficPolicy need two endpoint
        # sets on one port): their ports, for the rules.
        self._second_ports: dict[ServicePortKey, int] = {}
        self._specs: dict[ServicePortKey, ServicePort] = {}
        self._draining: list[tuple[ServicePortKey, TcpService, float]] = []
        self._housekeeper: gevent.Greenlet | None = None
        self._started = False

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        if self._started:
            return
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if self.manage_interface:
            setup = listen_mod.ensure_interface(self.listen)
            self.ipv6_ready, self.interface_owned = setup.ipv6, setup.owned
        if self.reserve_port_range:
            try:
                reserve_ports(self.port_range)
            except OSError as exc:
                log.warning("cannot reserve proxy ports %s: %s", self.port_range, exc)
        self._housekeeper = gevent.spawn(self._housekeeping)
        self.monitor.start()
        self._started = True

    def stop(self, grace: float | None = None) -> None:
        """Stop accepting everywhere, let TCP connections finish for ``grace`` seconds, reset
        the rest, then remove what we created (routes, interface)."""
        grace = self.drain_grace if grace is None else grace
        services = list(self._services.values()) + [s for _, s, _ in self._draining]
        for service in services:
            service.close_listeners()
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(s.active for s in services):
            gevent.sleep(0.05)
        for service in services:
            service.stats.draining_closed = 1  # dials still in flight end in a reset
            service.abort_all()
        if self._housekeeper is not None:
            self._housekeeper.kill(block=False)
            self._housekeeper = None
        self.monitor.stop()
        for key in list(self._services):
            self.allocator.release(str(key))
        for key in list(self._second_ports):
            self.allocator.release(second_listener_name(key))
        self._save_ports()
        self._services.clear()
        self._ports.clear()
        self._second_ports.clear()
        self._draining.clear()
        self.pipes.close()
        if self.manage_interface:
            self.routes.clear()
            if self.interface_owned:
                listen_mod.remove_interface(self.listen)
        self._started = False

    # -- desired state -------------------------------------------------------------------------

    def reconcile(self, ports: Mapping[ServicePortKey, ServicePort]) -> dict[ServicePortKey, int]:
        for key in [k for k in self._services if k not in ports]:
            self._remove(key)
        for key, sp in ports.items():
            if sp.key.protocol not in (Protocol.TCP, Protocol.UDP):
                continue
            if key in self._services:
                self._update(key, sp)
            else:
                try:
                    self._add(key, sp)
                except (PortExhaustedError, OSError) as exc:
                    log.error("%s: cannot listen: %s", key, exc)
        self._save_ports()
        return dict(self._ports)

    # -- endpoint selection and health --------------------------------------------------------

    def _health_for(self, key: ServicePortKey) -> EndpointHealth:
        health = EndpointHealth(
            self.health_settings, probes=key.protocol is Protocol.TCP,
            on_change=lambda ep, old, new, why: self._health_changed(key, ep, old, new, why))
        self.monitor.watch(health)
        return health

    def _health_changed(self, key: ServicePortKey, ep, old: str, new: str, why: str) -> None:
        service = self._services.get(key)
        if new == EJECTED:
            view = service.health.view(ep, time.monotonic()) if service else None
            log.warning("%s: endpoint %s ejected for %.1fs (%s)", key, ep,
                        (view.ejected_until - time.monotonic()) if view and view.ejected_until
                        else 0.0, why)
            if isinstance(service, UdpService):
                service.endpoint_ejected(ep)  # their next datagrams pick a usable endpoint
        elif old == EJECTED:
            log.warning("%s: endpoint %s back in service (%s)", key, ep, why)

    def _apply_selection(self, key: ServicePortKey, service: TcpService | UdpService,
                         sp: ServicePort) -> None:
        """Which endpoints each listener of ``key`` balances over on this node, and the
        health tracking of exactly those (topology.select)."""
        chosen = select(sp, self.node, self.locality_aware)
        self._selections[key] = chosen
        service.health.update(chosen.used())
        service.balancer.update((), sp.lb_policy, sp.session_affinity, sp.affinity_timeout,
                                tiers=chosen.main.tiers)
        service.balancer.refusing = chosen.main.refused
        if chosen.second is None:
            service.second_balancer = None
            return
        if service.second_balancer is None:
            service.second_balancer = Balancer(health=service.health)
        service.second_balancer.update((), sp.lb_policy, sp.session_affinity,
                                       sp.affinity_timeout, tiers=chosen.second.tiers)
        service.second_balancer.refusing = chosen.second.refused

    def configure_endpoints(self, node: NodeIdentity, locality_aware: bool,
                            health: HealthSettings, probe_concurrency: int) -> None:
        """New node identity / locality / health settings (SIGHUP): every port selects again;
        endpoint health states are kept."""
        self.node, self.locality_aware, self.health_settings = node, locality_aware, health
        self.monitor.concurrency = max(1, probe_concurrency)
        self.monitor.timeout = health.probe_timeout
        for key, service in self._services.items():
            service.health.settings = health
            self._apply_selection(key, service, self._specs[key])

    def _add(self, key: ServicePortKey, sp: ServicePort) -> None:
        stats = ServiceStats()
        health = self._health_for(key)
        service: TcpService | UdpService
        if key.protocol is Protocol.TCP:
            service = TcpService(str(key), Balancer(health=health), stats, self.pipes,
                                 self.max_connections, self.tcp_idle_timeout,
                                 budget=self.budget,
                                 **({"dial_timeouts": self.dial_timeouts}
                                    if self.dial_timeouts else {}))
        else:
            service = UdpService(str(key), Balancer(health=health), stats, self.udp_timeout,
                                 self.max_udp_sessions, budget=self.budget)
        self._apply_selection(key, service, sp)
        try:
            port, bound = self._allocate_bound(str(key), key.protocol, sp)
        except BaseException:
            self.monitor.forget(health)
            self._selections.pop(key, None)
            raise
        for sock in bound:
            service.add_listener(sock)
        service.start()
        self._services[key] = service
        self._ports[key] = port
        self._specs[key] = sp
        log.info("%s: listening on port %d (%d endpoints)", key, port, len(sp.endpoints))
        self._sync_second(key, service, sp)

    def _allocate_bound(self, name: str, protocol: Protocol, sp: ServicePort
                        ) -> tuple[int, list[_socket.socket]]:
        """A proxy port for ``name`` bound on every family ``sp`` needs (stable: ports)."""
        families = self._families(sp)
        bound: list[_socket.socket] = []

        def try_bind(port: int) -> int | None:
            socks: list[_socket.socket] = []
            try:
                for family, addr in families:
                    sock = self._bind(protocol, family, addr, port)
                    socks.append(sock)
                    if port == 0:
                        port = sock.getsockname()[1]
            except OSError as exc:
                for sock in socks:
                    sock.close()
                if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                    return None
                raise
            bound.extend(socks)
            return port

        return self.allocator.allocate(name, try_bind), bound

    def _sync_second(self, key: ServicePortKey, service: TcpService | UdpService,
                     sp: ServicePort) -> None:
        """Open the second listener a port's traffic policies need, or close it when they no
        longer do (docs/endpoints.md); connections and sessions through it stay open."""
        if sp.second_listener and key not in self._second_ports:
            try:
                port, bound = self._allocate_bound(second_listener_name(key), key.protocol, sp)
            except (PortExhaustedError, OSError) as exc:
                log.error("%s: cannot open the second listener for its external traffic "
                          "policy: %s", key, exc)
                return
            for sock in bound:
                service.add_listener(sock, second=True)
            self._second_ports[key] = port
            log.info("%s: second listener on port %d (external traffic, %s endpoints)", key,
                     port, "Cluster" if sp.internal_policy_local else "Local")
        elif not sp.second_listener and key in self._second_ports:
            service.close_second()
            self.allocator.release(second_listener_name(key))
            del self._second_ports[key]

    def _families(self, sp: ServicePort) -> list[tuple[int, str]]:
        families = []
        if _needs_v4(sp):
            families.append((_socket.AF_INET, self.listen.ipv4))
        if _needs_v6(sp) and self.listen.ipv6 and self.ipv6_ready:
            families.append((_socket.AF_INET6, self.listen.ipv6))
        return families

    @staticmethod
    def _bind(protocol: Protocol, family: int, addr: str, port: int) -> _socket.socket:
        kind = _socket.SOCK_STREAM if protocol is Protocol.TCP else _socket.SOCK_DGRAM
        sock = _socket.socket(family, kind)
        try:
            if family == _socket.AF_INET6:
                sock.setsockopt(_socket.IPPROTO_IPV6, _socket.IPV6_V6ONLY, 1)
            if kind == _socket.SOCK_STREAM:
                # TIME_WAIT of the previous run must not block our stable port on restart.
                sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
            sock.bind((addr, port))
            if kind == _socket.SOCK_STREAM:
                sock.listen(LISTEN_BACKLOG)
        except OSError:
            sock.close()
            raise
        return sock

    def _update(self, key: ServicePortKey, sp: ServicePort) -> None:
        service = self._services[key]
        old = self._specs.get(key)
        if old == sp:
            return
        self._apply_selection(key, service, sp)
        self._sync_families(key, service, sp)
        self._sync_second(key, service, sp)
        self._specs[key] = sp

    def _sync_families(self, key: ServicePortKey, service: TcpService | UdpService,
                       new: ServicePort) -> None:
        """Open the listener of a family the service gained VIPs in (same proxy port), close
        the one of a family it lost its last VIP in: a listener with no VIP left behind it is
        only a way in that no rule leads to. Open TCP connections are not touched."""
        wanted = {family for family, _ in self._families(new)}
        # What is actually listening, not what the old spec asked for: a bind that failed
        # last time is retried on the next change.
        had = {sock.family for sock, _ in service.listeners}
        for family, addr, port, second in self._listener_gaps(key, service, new):
            try:
                service.add_listener(self._bind(key.protocol, family, addr, port), second)
            except OSError as exc:
                log.error("%s: cannot add %s listener on port %d: %s", key,
                          _family_name(family), port, exc)
        for family in had - wanted:
            if service.close_family(family):
                log.info("%s: no %s VIP left, closed that listener", key, _family_name(family))

    def _remove(self, key: ServicePortKey) -> None:
        service = self._services.pop(key)
        self._ports.pop(key, None)
        self._specs.pop(key, None)
        self._selections.pop(key, None)
        if self._second_ports.pop(key, None) is not None:
            self.allocator.release(second_listener_name(key))
        self.monitor.forget(service.health)
        self.allocator.release(str(key))
        service.close_listeners()
        if isinstance(service, TcpService) and service.active:
            service.stats.draining = 1
            self._draining.append((key, service, time.monotonic() + self.drain_grace))
            log.info("%s: removed, draining %d connections for %.0fs", key, service.active,
                     self.drain_grace)

    def _save_ports(self) -> None:
        try:
            self.allocator.save()
        except OSError as exc:
            log.warning("cannot persist proxy ports in %s: %s", self.state_dir, exc)

    # -- keeping the data path ----------------------------------------------------------------

    def _listener_gaps(self, key: ServicePortKey, service: TcpService | UdpService,
                       sp: ServicePort) -> Iterator[tuple[int, str, int, bool]]:
        """(family, address, port, second) of each listener ``sp`` needs that ``service``
        lacks: the main listener's and, where the port has one, the second listener's."""
        roles = [(self._ports[key], False)]
        if key in self._second_ports:
            roles.append((self._second_ports[key], True))
        for port, second in roles:
            have = service.listeners.families(second)
            for family, addr in self._families(sp):
                if family not in have:
                    yield family, addr, port, second

    def _missing_listeners(self) -> list[tuple[ServicePortKey, str, int]]:
        """(key, "IPv4"/"IPv6" [+ " second"], port) of every listener that should be open."""
        missing = []
        for key, service in self._services.items():
            sp = self._specs.get(key)
            if sp is None:
                continue
            for family, _, port, second in self._listener_gaps(key, service, sp):
                missing.append((key, _family_name(family) + (" second" if second else ""), port))
        return missing

    def health_problems(self) -> list[str]:
        """What keeps captured traffic from being served right now ([] when nothing)."""
        if not self._started:
            return []
        problems = []
        if self.manage_interface:
            problems += listen_mod.data_path_problems(self.listen, self.ipv6_ready)
        problems += [f"{key}: no {family} listener on port {port}"
                     for key, family, port in self._missing_listeners()]
        return problems

    def verify(self) -> list[str]:
        """Repair what `health_problems` finds; returns what was repaired (for the log)."""
        if not self._started:
            return []
        repaired: list[str] = []
        if self.manage_interface:
            broken = listen_mod.data_path_problems(self.listen, self.ipv6_ready)
            if broken:
                setup = listen_mod.ensure_interface(self.listen)
                self.ipv6_ready = setup.ipv6
                self.interface_owned = self.interface_owned or setup.owned
                self.routes.recheck_soon()
                self.routes.sync({vip for sp in self._specs.values() for vip in sp.vips})
                repaired += broken
        missing = self._missing_listeners()
        for key in dict.fromkeys(key for key, _, _ in missing):  # each port once, in order
            self._sync_families(key, self._services[key], self._specs[key])
        repaired += [f"{key}: {family} listener was closed" for key, family, _ in missing]
        self.repairs_total += len(repaired)
        return repaired

    # -- routes --------------------------------------------------------------------------------

    def sync_routes(self, vips: Iterable[str]) -> set[str]:
        """Routes on the interface for VIPs the node cannot route (offline node)."""
        return self.routes.sync(vips)

    # -- observation ---------------------------------------------------------------------------

    def stats(self) -> dict[ServicePortKey, ServiceStats]:
        result = {}
        for key, service, _ in self._draining:
            result[key] = self._snapshot(service)
        for key, service in self._services.items():
            result[key] = self._snapshot(service)
        return result

    @staticmethod
    def _snapshot(service: TcpService | UdpService) -> ServiceStats:
        snap = service.stats.snapshot()
        if isinstance(service, TcpService):
            snap.active_connections = service.active
        else:
            snap.udp_sessions = len(service.sessions)
        health = service.health
        snap.endpoint_ejections_total = health.ejections_total
        snap.endpoint_readmissions_total = health.readmissions_total
        snap.probes_total = health.probes_total
        snap.probe_failures_total = health.probe_failures_total
        snap.endpoints_ejected = len(health.ejected)
        snap.panic = int(service.balancer.all_ejected())
        return snap

    def endpoint_reports(self) -> dict[ServicePortKey, PortEndpointsReport]:
        """Per service port: what this node balances over and each endpoint's health."""
        now = time.monotonic()
        out = {}
        for key, service in self._services.items():
            chosen, sp = self._selections.get(key), self._specs.get(key)
            if chosen is None or sp is None:
                continue
            used = chosen.used()
            report = PortEndpointsReport(
                chosen.categorized.topology_mode, chosen.main.policy, chosen.main.refused,
                chosen.second.policy if chosen.second else None,
                chosen.second.refused if chosen.second else False,
                panic=service.balancer.all_ejected())
            for info in sp.infos:
                view = service.health.view(info.address, now)
                entry = EndpointReport(locality(info, self.node), info.address in used,
                                       view.state if view else "-")
                if view is not None:
                    entry.consecutive_failures = view.consecutive_failures
                    entry.ejected_for = max(0.0, view.ejected_until - now) \
                        if view.ejected_until is not None else None
                    entry.ejections = view.ejections
                    entry.last_error = view.last_error
                    entry.slow = view.slow
                    entry.connect_seconds = view.connect_seconds
                report.endpoints[str(info.address)] = entry
            out[key] = report
        return out

    @property
    def ports(self) -> dict[ServicePortKey, int]:
        return dict(self._ports)

    @property
    def second_ports(self) -> dict[ServicePortKey, int]:
        """The second listeners' ports (ports whose traffic policies need one)."""
        return dict(self._second_ports)

    # -- housekeeping --------------------------------------------------------------------------

    def _housekeeping(self) -> None:
        ticks = 0
        while True:
            gevent.sleep(HOUSEKEEPING_PERIOD)
            ticks += 1
            try:
                self.housekeep(time.monotonic(), expire_affinity=ticks % 60 == 0)
            except Exception:  # housekeeping must survive anything
                log.exception("forwarding housekeeping failed")

    def housekeep(self, now: float, expire_affinity: bool = False) -> None:
        for service in self._services.values():
            service.sweep(now)
            if expire_affinity:
                service.balancer.expire_affinity()
        still = []
        for key, service, deadline in self._draining:
            service.sweep(now)
            if not service.active or now >= deadline:
                if service.active:
                    log.info("%s: drain grace over, resetting %d connections", key,
                             service.active)
                service.abort_all()
                service.stats.draining = 0
                service.stats.draining_closed = 1
            else:
                still.append((key, service, deadline))
        self._draining = still
