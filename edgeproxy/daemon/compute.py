"""Load, validate and build the desired state off the gevent hub.

The catalog keeps per-file caches and last-good objects, and the state builder's cache keeps
what it derived from them (``BuildCache``), so both live as long as the daemon. Reading,
parsing and validating changed files happens in the parse worker process
(edgeproxy/manifests/worker.py: a memory and a time budget per file, memory given back); the
rest of a refresh (stat, merging, `build_state`) runs in gevent's native thread pool, so the
hub keeps serving connections and watchdog pings meanwhile.

Between loading and building, Services without a clusterIP get one from ``serviceCIDR``
(state/allocation.py), so everything downstream sees them as ordinary ClusterIP Services; the
DNS zone (dns/records.py) is built from the same objects in the same computation, so a file
change reaches the rules, the listeners and the DNS answers in one sync.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from edgeproxy.model import DesiredState, FilterMode, ManifestError


@dataclass(frozen=True)
class ZoneSettings:
    """What the DNS zone is built with (None in StateComputer: no DNS server, no zone)."""

    domain: str = "cluster.local"
    ttl: int = 5
    ns_addresses: tuple[str, ...] = ()  # the DNS server's own: ns.dns.<domain>


@dataclass(frozen=True)
class Computed:
    """One computation: the state, and what the catalog said about the manifests."""

    state: DesiredState
    root_error: str | None
    file_count: int
    files: Mapping[str, Any] = field(default_factory=dict)
    errors: tuple[ManifestError, ...] = ()
    retry: tuple[Path, ...] = ()  # probably half-written: refresh again shortly
    zone: Any = None  # dns.records.Zone of the same objects (None: DNS off)
    # (namespace, name) -> cluster IPs given from serviceCIDR (state/allocation.py).
    allocated: Mapping[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)
    unallocated: Mapping[tuple[str, str], str] = field(default_factory=dict)
    address_changes: tuple[Any, ...] = ()  # allocation.AddressChange since the last one


class StateComputer:
    """The catalog and the builder's cache of one daemon; one computation at a time (the
    daemon's syncs are serial), so the cache needs no lock."""

    def __init__(self, root: Path, filter_mode: FilterMode, policy: Any = None,
                 service_cidr: str = "",
                 zone: ZoneSettings | None = None) -> None:
        from edgeproxy.dns.records import ZoneBuilder
        from edgeproxy.manifests.catalog import DEFAULT_SETTLE, ManifestCatalog
        from edgeproxy.state.allocation import ClusterIPAllocator, ServiceCIDRs
        from edgeproxy.state.builder import BuildCache

        self.root = root
        self.filter_mode = filter_mode
        self.service_cidr = service_cidr
        self.zone_settings = zone
        self.allocator = ClusterIPAllocator(ServiceCIDRs.parse(service_cidr), filter_mode)
        self.zones = ZoneBuilder()
        self._zone_serial = 0
        self.cache = BuildCache()
        from edgeproxy.manifests.worker import ParseWorker

        self.worker = ParseWorker()
        self.catalog = ManifestCatalog(root, keep_last_good=True, policy=policy,
                                       loader=self.worker.load,
                                       settle=DEFAULT_SETTLE)

    def compute_blocking(self, changed: Iterable[Path] | None,
                         writing: Iterable[Path] = ()) -> Computed:
        from edgeproxy.state import build_state

        import time

        from edgeproxy.state.allocation import ServiceCIDRs

        snapshot = self.catalog.refresh(None if changed is None else list(changed), writing)
        # A SIGHUP may have changed these (daemon/core.py sets the attributes).
        self.allocator.configure(ServiceCIDRs.parse(self.service_cidr), self.filter_mode)
        objects, changes = self.allocator.apply(snapshot.objects)
        state = build_state(objects, self.filter_mode, snapshot.errors, cache=self.cache)
        zone = None
        settings = self.zone_settings
        if settings is not None:
            # The serial is the time of the change (as CoreDNS's), never going back.
            serial = max(self._zone_serial + 1, int(time.time())) & 0xFFFFFFFF
            zone = self.zones.build(objects, settings.domain, settings.ttl, serial,
                                    settings.ns_addresses)
            self._zone_serial = max(self._zone_serial, zone.serial)
        files = dict(snapshot.files)
        allocation = self.allocator.allocation
        return Computed(state=state, root_error=snapshot.root_error, file_count=len(files),
                        files=files, errors=tuple(snapshot.errors), retry=tuple(snapshot.retry),
                        zone=zone, allocated=dict(allocation.addresses),
                        unallocated=dict(allocation.unallocated),
                        address_changes=tuple(changes))

    def compute(self, changed: Iterable[Path] | None, writing: Iterable[Path] = ()) -> Computed:
        import gevent

        changed_list = None if changed is None else list(changed)
        return gevent.get_hub().threadpool.apply(self.compute_blocking,
                                                 (changed_list, list(writing)))

    def close(self) -> None:
        self.worker.close()
