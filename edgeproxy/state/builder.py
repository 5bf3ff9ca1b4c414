"""The desired state: validated objects in, ``DesiredState`` (what to proxy, and why not) out.

`build_state` is pure: no I/O, and for a given set of objects the same state whatever their
order, whether or not a `BuildCache` is passed. It owns
* duplicate objects: the same kind/namespace/name twice -> the one with the smallest
  (file path, document index) wins, the others are reported as conflicts and ignored
  (a Service that loses is listed with reason ``conflict``);
* the service verdicts (``filtering``), one ``ServicePort`` per proxied (service, port, protocol);
  SCTP ports stay in the verdict's port list but never enter the desired state;
* endpoints, matched to service ports by port name and protocol as kube-proxy does: from the
  EndpointSlices labelled ``kubernetes.io/service-name`` when the Service has any, otherwise from
  its Endpoints; the target port is the endpoint port's number. Each port keeps every endpoint
  with its conditions, node, zone, hints and target (``endpoint_info``, read by
  ``state.endpoints``) and the Service's traffic policies (``traffic``); ``endpoints`` is the
  sorted, deduplicated ready ones;
* VIP conflicts: two services claiming the same VIP:port/protocol -> the service with the
  smaller source wins, the loser's port is not proxied and the conflict is reported;
* DestinationRules (EdgeMesh): the rule named like the Service in its namespace sets the
  port's ``lb_policy``.

Speed: a reload after one changed file must not redo the work for 10,000 unchanged services.
The per-service result is a pure function of (Service object, its slices or Endpoints object,
its DestinationRule, filter mode); the catalog hands out the same object instances for
unchanged files (``KubeObject`` compares and hashes by identity), so a `BuildCache` kept by the
caller between builds (the daemon's ``StateComputer``) remembers each Service's result and each
file chunk's, and only the cheap global passes (grouping, duplicate and VIP-conflict detection)
run over everything. The cache changes how fast a build is, never what it returns.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from itertools import chain
from operator import attrgetter
from typing import Iterable, Mapping, NamedTuple

from edgeproxy.model import (
    DEFAULT_AFFINITY_TIMEOUT_SECONDS,
    DEFAULT_NAMESPACE,
    SERVICE_NAME_LABEL,
    Conflict,
    DesiredState,
    FilterMode,
    KubeObject,
    LoadBalancerKind,
    LoadBalancerPolicy,
    ManifestError,
    Protocol,
    ServicePort,
    ServicePortKey,
    ServiceVerdict,
    SkipReason,
    SourceRef,
    Verdict,
    format_host_port,
)

from .endpoints import endpoints_endpoints, port_endpoints, slice_endpoints, traffic_policy
from .gcpause import gc_paused
from .filtering import PROXIED_PROTOCOLS, service_vips, verdict_reason

_ORDER = attrgetter("order")
_USED_KINDS = ("Service", "Endpoints", "EndpointSlice", "DestinationRule")

Ident = tuple[str, str]  # (namespace, name)
Chunk = tuple[KubeObject, ...]


@dataclass(frozen=True)
class _ServiceResult:
    """Everything derived from one Service and its dependencies alone."""

    verdict: ServiceVerdict  # as if no other service conflicted with it
    ports: tuple[ServicePort, ...]
    # per port: its "vip port proto" claims (strings: their hash is cached, tuples rehash)
    claims: tuple[tuple[str, ...], ...]
    # The same, as dicts, so the common no-conflict case is two C-level dict updates (a dict
    # copied into another keeps its stored hashes: ServicePortKey's hash is Python code).
    port_map: dict
    claim_map: dict


class ChunkedObjects(tuple):
    """A tuple of objects that also knows its chunks (one per file, in path order).

    The catalog hands these out, chunks in file-path order; a chunk is the very same tuple while
    its file is unchanged. ``build_state`` with a cache then redoes its grouping only for
    changed chunks and reuses whole chunks' results: touching 20,000 cold objects costs more
    than the 50 ms a one-file reload may take.
    """

    chunks: tuple[Chunk, ...]

    def __new__(cls, chunks: Iterable[Chunk]) -> "ChunkedObjects":
        chunks = tuple(chunks)
        self = super().__new__(cls, chain.from_iterable(chunks))
        self.chunks = chunks
        return self


@dataclass
class _Groups:
    """Objects grouped by kind and (namespace, name); the first step of every build."""

    winners: dict[str, dict[Ident, KubeObject]]
    losers: list[KubeObject]
    ignored: dict[str, int]
    slices: Mapping[Ident, list[KubeObject]] | "_SlicesView"  # (namespace, service) -> slices


class _Deps(NamedTuple):
    """What one Service's result depends on besides the Service itself (a tuple: compared
    for every cached Service on every build, at C speed)."""

    filter_mode: FilterMode
    slices: tuple[KubeObject, ...]
    endpoints: KubeObject | None
    rule: KubeObject | None


class _CachedService(NamedTuple):
    deps: _Deps
    result: _ServiceResult


@dataclass(frozen=True)
class _ChunkResult:
    """A chunk's contribution to a build in which none of its services had a VIP conflict."""

    filter_mode: FilterMode
    ports: dict[ServicePortKey, ServicePort]
    claims: dict[str, ServicePort]
    verdicts: tuple[ServiceVerdict, ...]


@dataclass
class _Chunk:
    """What one chunk contributed to the previous build (see ``ChunkedObjects``)."""

    objects: Chunk
    groups: _Groups
    services: list[KubeObject]  # sorted by source
    tables: list[tuple[str, dict]]  # the non-empty winners tables
    idents: set[Ident]  # every (namespace, name) its objects may affect
    result: _ChunkResult | None = None


@dataclass
class BuildCache:
    """What the previous build derived, for the next build to reuse; owned by one caller.

    Keys are the objects themselves: ``KubeObject`` and the catalog's chunk tuples of them hash
    by identity of their objects, so an entry is found exactly while the catalog hands out the
    same instances. Not for concurrent builds: each caller (the daemon's ``StateComputer``,
    whose syncs are serial) keeps its own.
    """

    services: dict[KubeObject, _CachedService] = field(default_factory=dict)
    chunks: dict[Chunk, _Chunk] = field(default_factory=dict)


def _policy(rule: KubeObject | None) -> LoadBalancerPolicy:
    if rule is None:
        return LoadBalancerPolicy()
    lb = (((rule.body.get("spec") or {}).get("trafficPolicy") or {}).get("loadBalancer") or {})
    consistent = lb.get("consistentHash")
    if consistent:
        if consistent.get("httpHeaderName"):
            return LoadBalancerPolicy(LoadBalancerKind.CONSISTENT_HASH_HTTP_HEADER,
                                      consistent["httpHeaderName"], rule.source)
        return LoadBalancerPolicy(LoadBalancerKind.CONSISTENT_HASH_SOURCE_IP, None, rule.source)
    if lb.get("simple") == "RANDOM":
        return LoadBalancerPolicy(LoadBalancerKind.RANDOM, None, rule.source)
    return LoadBalancerPolicy(LoadBalancerKind.ROUND_ROBIN, None, rule.source)


def _all_keys(svc: KubeObject) -> tuple[ServicePortKey, ...]:
    keys = []
    for p in (svc.body.get("spec") or {}).get("ports") or []:
        try:
            protocol = Protocol(p.get("protocol") or "TCP")
        except ValueError:
            continue
        keys.append(ServicePortKey(svc.namespace, svc.name, p.get("name") or "", protocol))
    return tuple(keys)


def _compute(svc: KubeObject, deps: _Deps) -> _ServiceResult:
    reason = verdict_reason(svc.body, deps.filter_mode)
    all_keys = _all_keys(svc)
    if reason is not None:
        verdict = ServiceVerdict(svc.source, svc.namespace, svc.name, Verdict.SKIP, reason,
                                 all_keys)
        return _ServiceResult(verdict, (), (), {}, {})
    spec = svc.body.get("spec") or {}
    if deps.slices:
        backends = slice_endpoints(deps.slices)
    elif deps.endpoints is not None:
        backends = endpoints_endpoints(deps.endpoints)
    else:
        backends = {}
    traffic = traffic_policy(svc.body)
    policy = _policy(deps.rule)
    affinity = spec.get("sessionAffinity") == "ClientIP"
    timeout = ((spec.get("sessionAffinityConfig") or {}).get("clientIP") or {}).get(
        "timeoutSeconds") or DEFAULT_AFFINITY_TIMEOUT_SECONDS
    ingress = ((svc.body.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
    lb_ips = tuple(i["ip"] for i in ingress if i.get("ip"))
    vips = tuple(service_vips(spec))
    external = tuple(spec.get("externalIPs") or ())
    ports, claims = [], []
    for p in spec.get("ports") or []:
        protocol = p.get("protocol") or "TCP"
        if protocol not in PROXIED_PROTOCOLS:
            continue
        name = p.get("name") or ""
        ready, infos, port_traffic = port_endpoints(backends.get((name, protocol)), traffic)
        sp = ServicePort(
            key=ServicePortKey(svc.namespace, svc.name, name, Protocol(protocol)),
            port=p["port"], cluster_ips=vips, node_port=p.get("nodePort") or None,
            external_ips=external, load_balancer_ips=lb_ips,
            session_affinity=affinity, affinity_timeout=timeout,
            endpoints=ready, lb_policy=policy, source=svc.source,
            endpoint_info=infos, traffic=port_traffic)
        ports.append(sp)
        claims.append(tuple(f"{vip} {sp.port} {protocol}" for vip in sp.vips))
    verdict = ServiceVerdict(svc.source, svc.namespace, svc.name, Verdict.PROXY, None, all_keys)
    return _ServiceResult(verdict, tuple(ports), tuple(claims), {sp.key: sp for sp in ports},
                          {c: sp for sp, cs in zip(ports, claims) for c in cs})


def build_state(objects: Iterable[KubeObject],
                filter_mode: FilterMode = FilterMode.FILTER_IF_LABEL_EXISTS,
                errors: Iterable[ManifestError] = (),
                cache: BuildCache | None = None) -> DesiredState:
    """The desired state of a set of validated objects (see the module docstring).

    ``cache``: what the caller's previous build left, reused and updated in place; without
    one every result is computed afresh."""
    with gc_paused():
        return _Build(cache if cache is not None else BuildCache(), FilterMode(filter_mode)
                      ).run(objects, tuple(errors))


def group_objects(objects: Iterable[KubeObject]) -> _Groups:
    """Winners per kind and (namespace, name) (the smallest source order wins), the losing
    duplicates, counts of ignored kinds, and EndpointSlices by owning Service; the DNS zone
    builds on the same grouping."""
    winners: dict[str, dict[Ident, KubeObject]] = {k: {} for k in _USED_KINDS}
    losers: list[KubeObject] = []
    ignored: dict[str, int] = defaultdict(int)
    for obj in objects:
        table = winners.get(obj.kind)
        if table is None:
            ignored[obj.kind] += 1
            continue
        key = (obj.namespace, obj.name)
        first = table.get(key)
        if first is None:
            table[key] = obj
            continue
        if obj.order < first.order:  # whatever the input order, the smaller source wins
            table[key], first, obj = obj, obj, first
        losers.append(obj)
    slices: dict[Ident, list[KubeObject]] = defaultdict(list)
    for s in winners["EndpointSlice"].values():
        labels = (s.body.get("metadata") or {}).get("labels")
        owner = labels.get(SERVICE_NAME_LABEL) if labels else None
        if owner:
            slices[(s.namespace, owner)].append(s)
    return _Groups(winners, losers, dict(ignored), slices)


def _chunk(objects: Chunk) -> _Chunk:
    groups = group_objects(objects)
    idents = {key for table in groups.winners.values() for key in table}
    idents.update(groups.slices)
    tables = [(kind, table) for kind, table in groups.winners.items() if table]
    return _Chunk(objects, groups, sorted(groups.winners["Service"].values(), key=_ORDER),
                  tables, idents)


def _merge_chunks(cache: BuildCache, chunks: tuple[Chunk, ...]
                  ) -> tuple[_Groups, list[_Chunk], set[Ident]] | None:
    """Merged groups, the chunks and the dirty idents; None when duplicates need the full path."""
    previous = cache.chunks
    current: dict[Chunk, _Chunk] = {}
    parts: list[_Chunk] = []
    dirty: set[Ident] = set()
    for objects in chunks:
        part = previous.get(objects)
        if part is None:
            part = _chunk(objects)
            dirty |= part.idents
        current[objects] = part
        parts.append(part)
    for key, part in previous.items():
        if current.get(key) is not part:
            dirty |= part.idents  # a removed or replaced chunk
    cache.chunks = current
    winners: dict[str, dict[Ident, KubeObject]] = {k: {} for k in _USED_KINDS}
    ignored: dict[str, int] = defaultdict(int)
    with_slices: list[dict] = []
    for part in parts:
        if part.groups.losers:
            return _fall_back(parts)
        for kind, table in part.tables:
            merged = winners[kind]
            before = len(merged)
            merged.update(table)  # C-level, reuses the stored hashes
            if len(merged) != before + len(table):
                return _fall_back(parts)  # the same object in two files: the full path decides
        for kind, count in part.groups.ignored.items():
            ignored[kind] += count
        if part.groups.slices:
            with_slices.append(part.groups.slices)  # type: ignore[arg-type]
    # Slices are looked up only for services being recomputed: a lazy view over the chunks
    # (one Service's slices may be spread over several files) instead of a merged dict.
    return _Groups(winners, [], dict(ignored), _SlicesView(with_slices)), parts, dirty


class _SlicesView:
    """``get(ident)`` over several chunks' (namespace, service) -> slices maps."""

    def __init__(self, maps: list[dict]) -> None:
        self.maps = maps

    def get(self, ident: Ident, default=None):
        found = [s for m in self.maps for s in m.get(ident, ())]
        return found or default


def _fall_back(parts: list[_Chunk]) -> None:
    # The full path does not maintain chunk results: forget them, or a later chunked build
    # could reuse a result computed before the changes this build consumed.
    for part in parts:
        part.result = None
    return None


class _Build:
    """One run of `build_state`: the assembly of per-service results into one state."""

    def __init__(self, cache: BuildCache, filter_mode: FilterMode) -> None:
        self.cache = cache
        self.filter_mode = filter_mode
        self.ports: dict[ServicePortKey, ServicePort] = {}
        self.claims: dict[str, ServicePort] = {}  # "vip port proto" -> the port holding it
        self.verdicts: list[ServiceVerdict] = []
        self.conflicts: list[Conflict] = []
        self.needs_sort = False  # verdicts not already in source order

    def run(self, objects: Iterable[KubeObject], errors: tuple[ManifestError, ...]
            ) -> DesiredState:
        merged = None
        if isinstance(objects, ChunkedObjects):
            merged = _merge_chunks(self.cache, objects.chunks)
        if merged is not None:
            groups, parts, dirty = merged
            batches = [(part.services, part) for part in parts]
        else:
            groups, parts, dirty = group_objects(objects), [], set()
            batches = [(sorted(groups.winners["Service"].values(), key=_ORDER), None)]
        self._duplicates(groups)
        # A flat build keeps only the entries it used (bounded by its size); chunked builds
        # add to the cache's entries and prune them below.
        seen = self.cache.services if merged is not None else {}
        for services, part in batches:
            if not self._reuse(part, dirty):
                self._batch(services, part, groups, seen)
        if merged is None:
            self.cache.services = seen
        elif len(seen) > 2 * sum(len(p.services) for p in parts) + 1000:
            live = {svc for p in parts for svc in p.services}  # drop the dead now and then
            self.cache.services = {k: v for k, v in seen.items() if k in live}
        self._invalid_services(errors)
        if self.needs_sort:  # otherwise already in source order (chunks come in file order)
            self.verdicts.sort(key=lambda v: source_order(v.source))
        return DesiredState(ports=self.ports, services=tuple(self.verdicts), errors=errors,
                            conflicts=tuple(self.conflicts), ignored_kinds=groups.ignored)

    def _duplicates(self, groups: _Groups) -> None:
        """Objects that lost to an earlier same-named one: conflicts, and a Service verdict."""
        for obj in sorted(groups.losers, key=_ORDER):
            first = groups.winners[obj.kind][(obj.namespace, obj.name)]
            self.conflicts.append(Conflict(f"{obj.kind} {obj.namespace}/{obj.name} defined "
                                           "twice", first.source, obj.source))
        for obj in groups.losers:
            if obj.kind == "Service":
                self.needs_sort = True
                self.verdicts.append(ServiceVerdict(obj.source, obj.namespace, obj.name,
                                                    Verdict.SKIP, SkipReason.CONFLICT,
                                                    _all_keys(obj)))

    def _reuse(self, part: _Chunk | None, dirty: set[Ident]) -> bool:
        """Take a chunk's whole previous result when nothing its services depend on changed."""
        done = part.result if part is not None else None
        if (done is None or done.filter_mode != self.filter_mode
                or not part.idents.isdisjoint(dirty)  # type: ignore[union-attr]
                or not self.claims.keys().isdisjoint(done.claims)):
            return False
        self.ports.update(done.ports)
        self.claims.update(done.claims)
        self.verdicts.extend(done.verdicts)
        return True

    def _deps(self, svc: KubeObject, groups: _Groups) -> _Deps:
        ident = (svc.namespace, svc.name)
        slices = groups.slices.get(ident)
        if not slices:
            found: tuple[KubeObject, ...] = ()
        elif len(slices) == 1:
            found = tuple(slices)
        else:
            found = tuple(sorted(slices, key=_ORDER))
        return _Deps(self.filter_mode, found, groups.winners["Endpoints"].get(ident),
                     groups.winners["DestinationRule"].get(ident))

    def _batch(self, services: list[KubeObject], part: _Chunk | None, groups: _Groups,
               seen: dict[KubeObject, _CachedService]) -> None:
        """Add the services of one chunk (or of a flat build), each from its cached result
        when its dependencies are unchanged; remember the chunk's result when it was clean."""
        ports: dict[ServicePortKey, ServicePort] = {}
        claims: dict[str, ServicePort] = {}
        verdicts: list[ServiceVerdict] = []
        clean = True
        cached = self.cache.services.get
        for svc in services:
            deps = self._deps(svc, groups)
            entry = cached(svc)
            if entry is None or entry.deps != deps:
                entry = _CachedService(deps, _compute(svc, deps))
            seen[svc] = entry
            result = entry.result
            if not result.ports:
                verdicts.append(result.verdict)
            elif self.claims.keys().isdisjoint(result.claim_map):  # usual: no VIP conflict
                self.claims.update(result.claim_map)
                self.ports.update(result.port_map)
                claims.update(result.claim_map)
                ports.update(result.port_map)
                verdicts.append(result.verdict)
            else:
                clean = False
                verdicts.append(self._with_conflicts(svc, result))
        self.verdicts.extend(verdicts)
        if part is not None:
            part.result = (_ChunkResult(self.filter_mode, ports, claims, tuple(verdicts))
                           if clean else None)

    def _with_conflicts(self, svc: KubeObject, result: _ServiceResult) -> ServiceVerdict:
        """Add the ports of ``svc`` whose VIP:port/protocol no earlier source holds; the
        others are conflicts. The verdict: skipped as a conflict when no port was kept."""
        kept = 0
        for sp, port_claims in zip(result.ports, result.claims):
            held = [c for c in port_claims if c in self.claims]
            if held:  # an earlier (smaller) source holds this VIP:port/protocol
                taken = self.claims[held[0]]
                vip = held[0].split(" ")[0]
                self.conflicts.append(Conflict(
                    f"{format_host_port(vip, sp.port)}/{sp.key.protocol.value} claimed by "
                    f"{taken.key.namespace}/{taken.key.name} and {svc.namespace}/{svc.name}",
                    taken.source, svc.source))  # type: ignore[arg-type]
                continue
            for c in port_claims:
                self.claims[c] = sp
            self.ports[sp.key] = sp
            kept += 1
        if kept:
            return result.verdict
        return ServiceVerdict(svc.source, svc.namespace, svc.name, Verdict.SKIP,
                              SkipReason.CONFLICT, result.verdict.ports)

    def _invalid_services(self, errors: tuple[ManifestError, ...]) -> None:
        """Services that failed validation are listed too, so `validate` shows every one."""
        invalid = [e for e in errors if e.kind == "Service" and e.document is not None
                   and e.name]
        if not invalid:
            return
        seen = {v.source for v in self.verdicts}
        for err in invalid:
            source = SourceRef(err.file, err.document)  # type: ignore[arg-type]
            if source not in seen:
                seen.add(source)
                self.needs_sort = True
                self.verdicts.append(ServiceVerdict(source, err.namespace or DEFAULT_NAMESPACE,
                                                    err.name, Verdict.SKIP,
                                                    SkipReason.INVALID))


def _doc_key(document: str) -> tuple:
    return tuple(int(p) if p.isdigit() else -1 for p in document.split("/"))


def source_order(source: SourceRef) -> tuple:
    """Sort key of a source: file path, then document index numerically ("10" after "9")."""
    return (source.file, _doc_key(source.document))
