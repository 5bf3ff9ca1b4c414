"""What the /status document, the metrics collector and the HTTP apps read of the daemon.

They see the daemon only through these `typing.Protocol` types: no ``Any``, no ``getattr``
fallbacks. The real pieces (`Daemon`, `RuleKeeper`, the rule backends, `ProxyServer`,
`Computed`) and the fakes the tests run the daemon with are checked against them by
tests/daemon/test_views.py, as kube-proxy asserts that its fakes implement its interfaces.

Also the plain numbers the daemon itself counts (no prometheus objects in the core), here
rather than in ``core`` so that ``metrics`` needs nothing of ``core`` (``core`` imports
``http``, which imports ``metrics``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Protocol, Sized, runtime_checkable

from edgeproxy.daemon.config import DaemonConfig
from edgeproxy.daemon.guard import GuardDecision
from edgeproxy.dns.server import DnsStats
from edgeproxy.forwarding.stats import PortEndpointsReport, ServiceStats
from edgeproxy.model import DesiredState, ListenAddresses, ManifestError, ServicePortKey
from edgeproxy.rules.backends.check import CheckReport

# Sync duration histogram buckets (seconds): from one changed file to a 10,000-service reload.
SYNC_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass
class DaemonCounters:
    """Plain numbers the collector and /status read (no prometheus objects in the core)."""

    syncs_total: int = 0
    sync_errors_total: int = 0
    holds_total: int = 0
    config_reloads_total: int = 0   # SIGHUPs whose config file was read and applied
    config_errors_total: int = 0    # SIGHUPs whose config file was invalid (kept running one)
    sync_duration_sum: float = 0.0
    sync_duration_buckets: list[int] = field(default_factory=lambda: [0] * len(SYNC_BUCKETS))
    last_sync_seconds: float = 0.0
    cluster_ip_changes_total: int = 0  # allocated cluster IPs that moved (a collision)

    def observe_sync(self, seconds: float) -> None:
        self.syncs_total += 1
        self.sync_duration_sum += seconds
        self.last_sync_seconds = seconds
        for i, bound in enumerate(SYNC_BUCKETS):
            if seconds <= bound:
                self.sync_duration_buckets[i] += 1


@runtime_checkable
class BackendView(Protocol):
    name: str
    check: CheckReport  # how the periodic checks were answered


@runtime_checkable
class KeeperView(Protocol):
    """The rule keeper's counters."""

    backend: BackendView
    repairs_total: int
    apply_errors_total: int
    checks_total: int
    check_seconds_total: float
    conntrack_deleted_total: int
    last_repair_descriptions: list[str]
    problem: str | None  # why the rules are not known to be in place


@runtime_checkable
class WatcherView(Protocol):
    """The manifest directory watcher (a supervised child process)."""

    running: bool  # a child is up with its watches in place
    events_total: int
    restarts_total: int
    watchdog_version: str | None  # the child's watchdog, once it reported ready


@runtime_checkable
class BudgetView(Protocol):
    """The forwarders' descriptor budget (forwarding/budget.py)."""

    total: int
    used: int
    exhausted_total: dict[str, int]  # by protocol: new traffic that had to wait or was dropped
    evicted_total: int  # UDP sessions closed to make room


@runtime_checkable
class ProxyView(Protocol):
    repairs_total: int  # data-path repairs: interface, addresses, listeners
    budget: BudgetView

    def stats(self) -> Mapping[ServicePortKey, ServiceStats]: ...

    # What each port balances over on this node and its endpoints' health (docs/endpoints.md).
    def endpoint_reports(self) -> Mapping[ServicePortKey, PortEndpointsReport]: ...

    def health_problems(self) -> list[str]: ...


@runtime_checkable
class ComputedView(Protocol):
    """What the last computation of the state said about the manifests."""

    root_error: str | None
    errors: tuple[ManifestError, ...]
    retry: tuple[Path, ...]  # files that look half-written: read again shortly
    # (namespace, name) -> cluster IPs given from serviceCIDR, and why some got none.
    allocated: Mapping[tuple[str, str], tuple[str, ...]]
    unallocated: Mapping[tuple[str, str], str]


@runtime_checkable
class DnsView(Protocol):
    """The DNS server (edgeproxy/dns/server.py)."""

    stats: DnsStats
    forwarder: ForwarderView
    cache: Sized

    def status(self) -> dict: ...

    def health_problems(self) -> list[str]: ...


@runtime_checkable
class ForwarderView(Protocol):
    errors_total: Mapping[str, int]  # "host:port" -> failed attempts
    down: bool


@runtime_checkable
class WorkerView(Protocol):
    """The parse worker process (manifests/worker.py)."""

    starts_total: int
    kills_total: int  # killed for a timeout or replaced after a crash
    recycles_total: int  # replaced to give memory back


@runtime_checkable
class ComputerView(Protocol):
    worker: WorkerView | None


@runtime_checkable
class DaemonView(Protocol):
    config: DaemonConfig
    counters: DaemonCounters
    listen: ListenAddresses
    ready: bool
    applied: DesiredState  # what is served (the last good state)
    proxy_ports: Mapping[ServicePortKey, int]
    last_computed: ComputedView | None
    held: GuardDecision | None
    keeper: KeeperView | None  # None until started
    proxy: ProxyView | None
    computer: ComputerView | None
    dns: DnsView | None  # None when --no-dns (or not started)
    watcher: WatcherView | None  # None when not watching (or not started)
    last_phases: Mapping[str, float]
    last_applied_wall: float | None
    queued_since: float | None  # monotonic: the oldest change not yet applied

    def confirm_removal(self) -> bool: ...

    def health_problems(self) -> list[str]: ...
