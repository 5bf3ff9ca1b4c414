"""The daemon: start order, the sync loop, the mass-removal guard, signals and shutdown.

Start: compute the state from every manifest, start the listeners (ProxyServer.reconcile), apply
the rules (RuleKeeper.update), start watching and the repair loop, then report ready
(READY=1, /readyz 200). A manifest error never stops the start: the valid rest is served.

One sync (run by the bounded-frequency runner, never two at once):
  1. the catalog re-reads what changed (off the hub), the state is built from it;
  2. the mass-removal guard may hold it (the last-good state keeps being served);
  3. listeners for the union of old and new service ports, so a new rule never DNATs to a
     closed port; rules rendered (off the hub) from the new state only and applied;
  4. listeners of removed service ports closed last (they drain for --drain-grace).

Signals: SIGHUP rescans everything and re-applies the rules; SIGUSR1 confirms a held removal;
SIGTERM/SIGINT hand the traffic back (rules removed unless --no-cleanup-on-exit), stop accepting,
drain up to --drain-grace, exit 0.
"""

from __future__ import annotations

import logging
import signal
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Protocol

import gevent
import gevent.event

from edgeproxy.daemon import guard, sdnotify
from edgeproxy.daemon.config import DaemonConfig
from edgeproxy.daemon.logs import log_event
from edgeproxy.daemon.runner import BoundedFrequencyRunner
from edgeproxy.daemon.views import (ComputedView, ComputerView, DaemonCounters, DnsView,
                                    KeeperView, ProxyView, WatcherView)
from edgeproxy.model import DesiredState, FilterMode, ListenAddresses, ServicePort, ServicePortKey
from edgeproxy.rules.render import RuleSet

log = logging.getLogger("edgeproxy.daemon")

RETRY_DELAY = 0.25  # seconds before a probably half-written file is read again
WATCHER_START_WAIT = 5.0  # seconds; the watcher process is normally ready in ~0.2 s


# The parts the Daemon drives (made by its factories: the real ones or a test's fakes). What
# status, metrics and http read of them is in views.py.


class Computation(ComputedView, Protocol):
    state: DesiredState
    file_count: int
    zone: Any  # dns.records.Zone, None when the DNS server is off
    address_changes: tuple[Any, ...]


class Computer(ComputerView, Protocol):
    filter_mode: FilterMode

    def compute(self, changed: set[Path] | None,
                writing: frozenset[Path] = frozenset()) -> Computation: ...

    def close(self) -> None: ...


class Proxy(ProxyView, Protocol):
    # Settings a SIGHUP may change; new listeners use them.
    udp_timeout: float
    tcp_idle_timeout: float | None
    drain_grace: float
    max_connections: int

    def start(self) -> None: ...

    def reconcile(self, ports: Mapping[ServicePortKey, ServicePort]
                  ) -> Mapping[ServicePortKey, int]: ...

    @property
    def second_ports(self) -> Mapping[ServicePortKey, int]:
        """Ports of the second listeners (a port whose traffic policies need one)."""

    def sync_routes(self, vips: Iterable[str]) -> object: ...

    def stop(self, grace: float | None = None) -> None: ...

    def verify(self) -> list[str]: ...

    # Node identity, locality and endpoint health settings (SIGHUP applies them at once).
    def configure_endpoints(self, node: Any, locality_aware: bool, health: Any,
                            probe_concurrency: int) -> None: ...


class Keeper(KeeperView, Protocol):
    check_period: float

    def update(self, ruleset: RuleSet) -> bool: ...

    def start(self) -> None: ...

    def stop(self, cleanup: bool = True) -> object: ...


class Watcher(WatcherView, Protocol):
    def start(self, wait: float = 5.0) -> bool: ...

    def reschedule(self) -> None: ...

    def stop(self) -> None: ...


class DnsService(DnsView, Protocol):
    def start(self) -> None: ...

    def update(self, zone: Any) -> None: ...

    def configure(self, settings: Any) -> None: ...

    def stop(self) -> None: ...


# (ports, proxy ports, listen addresses, second listeners' ports) -> rules
Renderer = Callable[[Mapping[ServicePortKey, ServicePort], Mapping[ServicePortKey, int],
                     ListenAddresses, Mapping[ServicePortKey, int]], RuleSet]


def dns_addresses(config: DaemonConfig) -> tuple[str, ...]:
    """The DNS server's addresses ((): the DNS server is off)."""
    if not config.dns:
        return ()
    return tuple(a for a in (config.dns_listen_address, config.dns_listen_address_v6) if a)


def listen_addresses(config: DaemonConfig) -> ListenAddresses:
    return ListenAddresses(ipv4=config.listen_address, ipv6=config.listen_address_v6 or None,
                           interface=config.listen_interface, dns=dns_addresses(config))


def zone_settings(config: DaemonConfig):
    from edgeproxy.daemon.compute import ZoneSettings

    if not config.dns:
        return None
    return ZoneSettings(config.cluster_domain, config.dns_ttl, dns_addresses(config))


def dns_settings(config: DaemonConfig):
    from edgeproxy.dns.server import DnsSettings

    return DnsSettings(domain=config.cluster_domain, ttl=config.dns_ttl,
                       upstreams=config.dns_upstreams,
                       upstream_timeout=config.dns_upstream_timeout,
                       cache_size=config.dns_cache_size, serve_stale=config.dns_serve_stale,
                       max_tcp_clients=config.dns_max_tcp_clients)


# The settings that decide which endpoints this node uses and how it judges them.
ENDPOINT_SETTINGS = ("node_name", "zone", "locality_aware", "outlier_consecutive_failures",
                     "outlier_base_ejection_time", "outlier_max_ejection_time",
                     "health_probe_interval", "health_probe_timeout",
                     "health_probe_concurrency")


def endpoint_settings(config: DaemonConfig) -> dict[str, Any]:
    """ProxyServer's node identity, locality and health keyword arguments."""
    from edgeproxy.forwarding.health import HealthSettings
    from edgeproxy.forwarding.topology import NodeIdentity

    return {"node": NodeIdentity(config.node_name, config.zone),
            "locality_aware": config.locality_aware,
            "health": HealthSettings(
                consecutive_failures=config.outlier_consecutive_failures,
                base_ejection=config.outlier_base_ejection_time,
                max_ejection=config.outlier_max_ejection_time,
                probe_interval=config.health_probe_interval,
                probe_timeout=config.health_probe_timeout),
            "probe_concurrency": config.health_probe_concurrency}


def default_factories(config: DaemonConfig) -> dict[str, Callable[[], Any]]:
    """The real pieces; tests pass fakes that follow the same interfaces."""

    def computer():
        from edgeproxy.daemon.compute import StateComputer
        from edgeproxy.manifests.reader import trust_policy

        policy = trust_policy(config.trusted_manifest_roots, config.allow_insecure_manifests)
        return StateComputer(config.manifests, FilterMode(config.service_filter_mode), policy,
                             service_cidr=config.service_cidr, zone=zone_settings(config))

    def proxy():
        from edgeproxy.forwarding.ports import PortRange
        from edgeproxy.forwarding.server import ProxyServer

        return ProxyServer(listen_addresses(config), PortRange.parse(config.proxy_port_range),
                           state_dir=config.state_dir, udp_timeout=config.udp_timeout,
                           tcp_idle_timeout=config.tcp_idle_timeout or None,
                           drain_grace=config.drain_grace,
                           max_connections_per_service=config.max_connections_per_service,
                           **endpoint_settings(config))

    def keeper():
        from edgeproxy.rules.backends import select_backend
        from edgeproxy.rules.conntrack import flush_udp_flows
        from edgeproxy.rules.keeper import RuleKeeper
        from edgeproxy.tools import LocalRunner

        # Cooperative: the hub keeps forwarding while iptables/nft/conntrack run.
        run = LocalRunner(cooperative=True)
        return RuleKeeper(select_backend(config.iptables_backend, run),
                          check_period=config.sync_period,
                          flush=lambda targets: flush_udp_flows(targets, run))

    def render():
        # Keeps each service port's rules between syncs: one changed Service among 10,000
        # is one rendered (the threadpool runs one render at a time: syncs are serial).
        from edgeproxy.rules.render import RuleRenderer

        return RuleRenderer()

    def dns():
        if not config.dns:
            return None
        from edgeproxy.dns.server import DnsServer

        return DnsServer([(a, config.dns_port) for a in dns_addresses(config)],
                         dns_settings(config))

    return {"computer": computer, "proxy": proxy, "keeper": keeper, "render": render,
            "dns": dns}


class Daemon:
    def __init__(self, config: DaemonConfig,
                 factories: dict[str, Callable[[], Any]] | None = None,
                 watch: bool = True, environ: dict[str, str] | None = None,
                 reread_config: Callable[[], DaemonConfig] | None = None) -> None:
        self.config = config
        # SIGHUP builds the configuration again (config file + the original flags) with this.
        self.reread_config = reread_config
        self.factories = {**default_factories(config), **(factories or {})}
        self.watch = watch
        self.environ = environ
        self.listen = listen_addresses(config)
        self.counters = DaemonCounters()
        self.computer: Computer | None = None
        self.proxy: Proxy | None = None
        self.keeper: Keeper | None = None
        self.render: Renderer | None = None
        self.dns: DnsService | None = None
        self.watcher: Watcher | None = None
        self.runner: BoundedFrequencyRunner | None = None
        # What is being served (last good) and what the last computation said.
        self.applied: DesiredState = DesiredState(ports={})
        self.proxy_ports: dict[ServicePortKey, int] = {}
        self.last_computed: Computation | None = None
        self.held: guard.GuardDecision | None = None
        self.confirm_requested = False
        self.ready = False
        self.started_at = time.time()
        self.last_applied_wall: float | None = None  # for /healthz lastUpdated
        self.queued_since: float | None = None  # monotonic: oldest change not yet applied
        self._pending_paths: set[Path] | None = set()
        self._writing: set[Path] = set()
        self._retry_timer: Any = None
        self._last_status_line = ""
        self._full_rescan = True
        self._force_apply = False
        self._phases: dict[str, float] = {}
        self.last_phases: dict[str, float] = {}  # of the last sync, for /status
        self._stopped = gevent.event.Event()
        self._done = gevent.event.Event()
        self.exit_code = 0
        self.servers: list[Any] = []

    # -- change intake -------------------------------------------------------------------------
    def request_sync(self, paths: set[Path] | None,
                     writing: frozenset[Path] | None = None) -> None:
        """Queue changed paths (None: rescan everything) and wake the runner. ``writing``
        (from the watcher): which of ``paths`` a writer still has open; their last good
        version serves until they are closed. None: no news about that (a retry, SIGHUP)."""
        if paths is None:
            self._full_rescan = True
        elif self._pending_paths is not None:
            self._pending_paths |= paths
        if writing is not None:
            self._writing = (self._writing - (paths or set())) | set(writing)
        if self.queued_since is None:
            self.queued_since = time.monotonic()
        if self.runner is not None:
            self.runner.run()

    def reload(self) -> None:
        """SIGHUP: re-read the config file, rescan every manifest and re-apply rules and
        listeners even if nothing changed."""
        log_event(log, logging.INFO, "reload requested (SIGHUP)")
        if self.reread_config is not None:
            self._reconfigure()
        self._force_apply = True
        self.request_sync(None)

    def _reconfigure(self) -> None:
        """Apply what can change while running; an invalid file keeps the running config."""
        from edgeproxy.daemon.config import ConfigError
        from edgeproxy.daemon.reconfigure import plan_reconfigure

        try:
            fresh = self.reread_config()  # type: ignore[misc]
        except ConfigError as exc:
            self.counters.config_errors_total += 1
            log_event(log, logging.ERROR, "config file invalid; keeping the running "
                      "configuration", error=str(exc))
            return
        plan = plan_reconfigure(self.config, fresh)
        if plan.needs_restart:
            log_event(log, logging.WARNING, "changed settings take effect at the next start",
                      settings=",".join(plan.needs_restart))
        self.counters.config_reloads_total += 1
        if not plan.live:
            return
        c = self.config = plan.config
        if {"log_format", "verbosity"} & set(plan.live):
            from edgeproxy.daemon.logs import configure_logging

            configure_logging(c.log_format, c.verbosity)
        if self.runner is not None:
            self.runner.min_interval = c.min_sync_period
            self.runner.max_interval = c.rescan_period
            self.runner.debounce = c.watch_debounce
        if self.keeper is not None:
            self.keeper.check_period = c.sync_period
        if self.computer is not None:
            self.computer.filter_mode = FilterMode(c.service_filter_mode)
            self.computer.service_cidr = c.service_cidr
            self.computer.zone_settings = zone_settings(c)
        if self.dns is not None:
            self.dns.configure(dns_settings(c))
        if self.proxy is not None:
            # New listeners use these; running services keep the values they started with.
            self.proxy.udp_timeout = c.udp_timeout
            self.proxy.tcp_idle_timeout = c.tcp_idle_timeout or None
            self.proxy.drain_grace = c.drain_grace
            self.proxy.max_connections = c.max_connections_per_service
            if set(ENDPOINT_SETTINGS) & set(plan.live):
                self.proxy.configure_endpoints(**endpoint_settings(c))
        log_event(log, logging.INFO, "configuration reloaded", changed=",".join(plan.live))

    def confirm_removal(self) -> bool:
        """Operator confirmation for a held sync; True when something was held."""
        if self.held is None:
            return False
        log_event(log, logging.WARNING, "removal confirmed by operator", reason=self.held.reason)
        self.confirm_requested = True
        self.request_sync(None)
        return True

    # -- sync ----------------------------------------------------------------------------------
    def sync(self, periodic: bool = False) -> None:
        start = time.monotonic()
        queued_at = self.queued_since
        full = self._full_rescan or periodic
        paths = None if full else set(self._pending_paths or ())
        self._full_rescan = False
        self._pending_paths = set()
        if full and self.watcher is not None:
            self.watcher.reschedule()
        try:
            self._phases = {}
            computed = self.computer.compute(paths, writing=frozenset(self._writing))
            self._phase("compute", start)
            self.last_computed = computed
            if computed.retry:
                self._retry_soon(set(computed.retry))
            applied = self._apply(computed)
        except Exception:
            # Retry everything that was pending: the runner backs off and calls us again.
            self._full_rescan = self._full_rescan or full
            if paths is not None and self._pending_paths is not None:
                self._pending_paths |= paths
            self.counters.sync_errors_total += 1
            raise
        finally:
            self.counters.observe_sync(time.monotonic() - start)
            self.last_phases = dict(self._phases)
        if self.queued_since == queued_at:
            self.queued_since = None
        if applied:  # a held sync applied nothing: "last updated" stays what it was
            self.last_applied_wall = time.time()
        self._notify_status()

    def _retry_soon(self, paths: set[Path]) -> None:
        """Files that look half-written are read again shortly (one timer at a time)."""
        if self._retry_timer is not None and not self._retry_timer.dead:
            self._retry_paths |= paths
            return
        self._retry_paths = set(paths)

        def fire() -> None:
            self.request_sync(self._retry_paths)

        self._retry_timer = gevent.spawn_later(RETRY_DELAY, fire)

    def _phase(self, name: str, since: float) -> float:
        """Record how long a sync phase took (shown in the "sync applied" line, so a slow
        reload says where its time went); returns now for the next phase."""
        now = time.monotonic()
        self._phases[name] = round(now - since, 3)
        return now

    def _apply(self, computed: Computation) -> bool:
        """Serve ``computed`` unless the guard holds it; False when held."""
        new = computed.state
        confirmed = self.confirm_requested
        decision = guard.evaluate(self.applied.ports, new.ports, self.config.max_removal_ratio,
                                  computed.root_error, computed.file_count, confirmed)
        if decision.hold:
            if self.held is None or self.held.reason != decision.reason:
                self.counters.holds_total += 1
                log_event(log, logging.WARNING,
                          "mass removal held; serving the last good state until confirmed "
                          "(edgeproxy confirm-removal)", reason=decision.reason)
            self.held = decision
            return False
        if self.held is not None and not confirmed:
            log_event(log, logging.INFO, "mass-removal hold cleared: the manifests recovered")
        self.held = None
        self.confirm_requested = False
        self._follow(computed)
        old = self.applied
        if new == old and not self._force_apply and self.proxy_ports:
            self.applied = new  # same services, maybe new verdicts/errors for status
            self._sync_routes(new)  # cheap unless a periodic routing recheck is due
            return True
        force, self._force_apply = self._force_apply, False
        t = time.monotonic()
        union = {**old.ports, **new.ports}
        proxy_ports = self.proxy.reconcile(union)
        wanted = {k: v for k, v in proxy_ports.items() if k in new.ports}
        second = {k: v for k, v in self.proxy.second_ports.items() if k in new.ports}
        t = self._phase("listen", t)
        ruleset = gevent.get_hub().threadpool.apply(self.render,
                                                    (new.ports, wanted, self.listen, second))
        t = self._phase("render", t)
        self.keeper.update(ruleset)
        t = self._phase("rules", t)
        if any(k not in new.ports for k in union):
            proxy_ports = self.proxy.reconcile(new.ports)
        self.proxy_ports = {k: v for k, v in proxy_ports.items() if k in new.ports}
        self._sync_routes(new)
        self._phase("routes", t)
        self.applied = new
        added = len([k for k in new.ports if k not in old.ports])
        removed = len([k for k in old.ports if k not in new.ports])
        log_event(log, logging.INFO, "sync applied", ports=len(new.ports), added=added,
                  removed=removed, errors=len(new.errors), forced=force or None,
                  **{f"{name}_s": took for name, took in self._phases.items()})
        return True

    def _follow(self, computed: Computation) -> None:
        """What a sync that is applied changes besides rules and listeners: the DNS zone
        (answers follow the manifests within this sync) and cluster-IP address changes."""
        for change in computed.address_changes:
            self.counters.cluster_ip_changes_total += 1
            log_event(log, logging.WARNING, "allocated cluster IP changed",
                      service=f"{change.ident[0]}/{change.ident[1]}", old=",".join(change.old),
                      new=",".join(change.new), why=change.why)
        if self.dns is not None and computed.zone is not None:
            self.dns.update(computed.zone)

    def _sync_routes(self, state: DesiredState) -> None:
        vips = {vip for sp in state.ports.values() for vip in sp.vips}
        try:
            self.proxy.sync_routes(vips)
        except Exception as exc:  # noqa: BLE001 - routes matter only on offline nodes
            log_event(log, logging.WARNING, "syncing routes failed", error=str(exc))

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        """Everything up to READY=1. Raises only for things that make running impossible."""
        c = self.config
        self.computer = self.factories["computer"]()
        self.proxy = self.factories["proxy"]()
        self.keeper = self.factories["keeper"]()
        self.render = self.factories["render"]()
        self.dns = self.factories["dns"]()
        self.start_http()
        self.proxy.start()
        if self.dns is not None:
            self.dns.start()  # on the interface proxy.start() made (bound even before that)
        if self.watch:
            # Watching before the first read: a change made while the initial sync runs is
            # then an event, not lost until the periodic rescan.
            self.start_watcher()
        self.runner = BoundedFrequencyRunner(self.sync, c.min_sync_period, c.rescan_period,
                                             debounce=c.watch_debounce)
        initial = self.runner.clock.now()
        try:
            self.sync()
        except Exception as exc:  # noqa: BLE001 - the runner retries; we still start
            log_event(log, logging.ERROR, "initial sync failed; retrying",
                      error=f"{type(exc).__name__}: {exc}")
            self.request_sync(None)
        self.keeper.start()
        self.runner.start(ran_at=initial)
        self.ready = True
        self._last_status_line = self.status_line()
        sdnotify.notify(f"READY=1\nSTATUS={self._last_status_line}", self.environ)
        interval = sdnotify.watchdog_interval(self.environ)
        if interval:
            gevent.spawn(self._watchdog_loop, interval)
        gevent.spawn(self._data_path_loop)
        log_event(log, logging.INFO, "ready", ports=len(self.applied.ports),
                  errors=len(self.applied.errors), healthz="%s:%d" % c.healthz_bind_address)

    def start_watcher(self) -> None:
        from edgeproxy.daemon.watcher import DirectoryWatcher

        self.watcher = DirectoryWatcher(self.config.manifests, self.request_sync)
        if not self.watcher.start(wait=WATCHER_START_WAIT):
            log_event(log, logging.WARNING, "manifest watcher not ready; starting anyway, the "
                      "periodic rescan covers changes until it is",
                      waited_s=WATCHER_START_WAIT)

    def _data_path_loop(self) -> None:
        """Keep what serving depends on besides the rules (those are the keeper's): the listen
        interface, its addresses and routes, the listeners; checked and repaired every
        --iptables-sync-period, like the chains."""
        while not self._stopped.wait(self.config.sync_period):
            try:
                repaired = self.proxy.verify() if self.proxy is not None else []
            except Exception as exc:  # noqa: BLE001 - the next period tries again
                log_event(log, logging.ERROR, "repairing the data path failed",
                          error=f"{type(exc).__name__}: {exc}")
                continue
            if repaired:
                log_event(log, logging.WARNING, "data path repaired", what="; ".join(repaired))
            self._notify_status()

    def status_line(self) -> str:
        """One line for `systemctl status` (sd_notify STATUS=): what is served, what is wrong."""
        errors = len(self.last_computed.errors) if self.last_computed is not None else 0
        problems = self.health_problems()
        ports = len(self.applied.ports)
        parts = [f"{ports} service port{'s' if ports != 1 else ''}",
                 f"{errors} manifest error{'s' if errors != 1 else ''}"]
        if self.held is not None:
            parts.append("a mass removal is held (edgeproxy confirm-removal)")
        parts.append(f"problem: {problems[0]}" + (f" (+{len(problems) - 1} more)"
                                                  if len(problems) > 1 else "")
                     if problems else "rules ok")
        return ", ".join(parts)

    def _notify_status(self) -> None:
        """Tell systemd the status line when it changed (after syncs and data-path checks)."""
        if not self.ready:
            return
        line = self.status_line()
        if line != self._last_status_line:
            self._last_status_line = line
            sdnotify.notify(f"STATUS={line}", self.environ)

    def health_problems(self) -> list[str]:
        """Why captured traffic may not be served as the manifests say, right now ([] when
        all is well): for /healthz, /readyz and `edgeproxy status`."""
        problems = []
        if self.queued_since is not None:
            waited = time.monotonic() - self.queued_since
            if waited > 2 * self.config.sync_period:
                problems.append(f"a manifest change has waited {waited:.1f} s to be applied")
        if self.proxy is not None:
            problems += self.proxy.health_problems()
        if self.keeper is not None and self.keeper.problem:
            problems.append(self.keeper.problem)
        if self.dns is not None:
            problems += self.dns.health_problems()
        return problems

    def _watchdog_loop(self, interval: float) -> None:
        # Pinged from the hub itself: a hub stuck in a blocking call stops pinging and
        # systemd restarts us (WatchdogSec).
        while not self._stopped.is_set():
            sdnotify.notify("WATCHDOG=1", self.environ)
            self._stopped.wait(interval)

    def start_http(self) -> None:
        from gevent.pywsgi import WSGIServer

        from edgeproxy.daemon.http import healthz_app, metrics_app

        for address, app in ((self.config.healthz_bind_address, healthz_app(self)),
                             (self.config.metrics_bind_address, metrics_app(self))):
            if address[1] == 0:
                continue
            server = WSGIServer(address, app, log=None,
                                error_log=logging.getLogger("edgeproxy.http"))
            server.start()
            self.servers.append(server)

    def install_signals(self) -> None:
        gevent.signal_handler(signal.SIGTERM, self.shutdown, "SIGTERM")
        gevent.signal_handler(signal.SIGINT, self.shutdown, "SIGINT")
        gevent.signal_handler(signal.SIGHUP, self.reload)
        gevent.signal_handler(signal.SIGUSR1, self.confirm_removal)

    def shutdown(self, why: str = "stop") -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        gevent.spawn(self._shutdown, why)

    def _shutdown(self, why: str) -> None:
        log_event(log, logging.INFO, "shutting down", signal=why,
                  cleanup=self.config.cleanup_on_exit, drain_grace=self.config.drain_grace)
        sdnotify.notify("STOPPING=1", self.environ)
        self.ready = False
        for step in (self.runner, self.watcher):
            try:
                if step is not None:
                    step.stop()
            except Exception as exc:  # noqa: BLE001 - stopping must always reach the end
                log_event(log, logging.WARNING, "stopping failed", what=type(step).__name__,
                          error=str(exc))
        try:
            # Hand the traffic back first: kube-proxy's rules take over new connections while
            # ours drain.
            if self.keeper is not None:
                self.keeper.stop(cleanup=self.config.cleanup_on_exit)
        except Exception as exc:  # noqa: BLE001
            self.exit_code = 1
            log_event(log, logging.ERROR, "removing rules failed", error=str(exc))
        try:
            if self.dns is not None:
                self.dns.stop()
        except Exception as exc:  # noqa: BLE001
            log_event(log, logging.WARNING, "stopping the DNS server failed", error=str(exc))
        try:
            if self.proxy is not None:
                self.proxy.stop(self.config.drain_grace)
        except Exception as exc:  # noqa: BLE001
            self.exit_code = 1
            log_event(log, logging.ERROR, "stopping listeners failed", error=str(exc))
        for server in self.servers:
            try:
                server.stop(timeout=1)
            except Exception:  # noqa: BLE001
                pass
        if self.computer is not None:
            self.computer.close()  # the parse worker is killed, never waited for
        self._done.set()

    def run_forever(self) -> int:
        self.install_signals()
        self.start()
        self._done.wait()
        log_event(log, logging.INFO, "stopped", exit_code=self.exit_code)
        return self.exit_code
