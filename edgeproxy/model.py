"""The shared vocabulary of edgeproxy: immutable values passed between the pure core and the shells.

Everything that crosses a module boundary (loader -> state builder -> rule renderer / forwarder ->
daemon / status) is one of these frozen dataclasses, so the pure core can be tested with plain
values and two states can be compared with ``==``.  Nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from functools import cached_property
from typing import Mapping, NamedTuple

# EdgeMesh's label; its presence (any value, "" included) decides the service filter.
SERVICE_PROXY_NAME_LABEL = "service.edgemesh.kubeedge.io/service-proxy-name"
# EndpointSlices name their Service through this label.
SERVICE_NAME_LABEL = "kubernetes.io/service-name"

DEFAULT_NAMESPACE = "default"
DEFAULT_AFFINITY_TIMEOUT_SECONDS = 10800  # Kubernetes' default for sessionAffinity: ClientIP
# A UDP client session (its upstream socket and endpoint) ends after this long without traffic
# either way. 30 s is the kernel's conntrack timeout for a UDP flow without a reply, the time a
# DNAT path (kube-proxy iptables/ipvs mode) keeps a flow's endpoint; kube-proxy userspace's
# 250 ms drops any reply later than that and moves a slow client to another session.
DEFAULT_UDP_TIMEOUT_SECONDS = 30.0


class FilterMode(str, Enum):
    """EdgeMesh's service filter modes for the service-proxy-name label."""

    FILTER_IF_LABEL_EXISTS = "FilterIfLabelExists"  # default: labelled services are skipped
    FILTER_IF_LABEL_DOES_NOT_EXISTS = "FilterIfLabelDoesNotExists"  # only labelled are proxied


# The choice lists of the flags and the config file, written once (options, the commands, the
# backends and cleanup read them; tests/daemon/test_config.py keeps the config schema's enums
# equal to them). The first filter mode is the default.
FILTER_MODES: tuple[str, ...] = tuple(mode.value for mode in FilterMode)
# The rule backends: iptables-restore of the iptables-legacy or iptables-nft flavour, or a
# table of our own in nftables (rules/backends).
RULE_BACKENDS = ("legacy", "nft", "nftables")
# --iptables-backend: one of them, or auto: detect the node's like kube-proxy's images do.
BACKEND_CHOICES = ("auto", *RULE_BACKENDS)


class Protocol(str, Enum):
    TCP = "TCP"
    UDP = "UDP"
    SCTP = "SCTP"  # valid in manifests, never proxied by edgeproxy


@dataclass(frozen=True, order=True)
class SourceRef:
    """Where an object came from: file path and 0-based document index ("3" or "3/items/7")."""

    file: str
    document: str

    def __str__(self) -> str:
        return f"{self.file}#{self.document}"


@dataclass(frozen=True)
class ManifestError:
    """One problem found in the input, addressed precisely enough for a person to fix it."""

    file: str
    document: str | None  # None when the whole file is rejected (syntax error, size cap)
    kind: str | None
    namespace: str | None
    name: str | None
    path: str  # field path such as "spec.ports[1].port"; "" for the document or file itself
    message: str

    def to_dict(self) -> dict:
        return {
            "file": self.file,
            "document": self.document,
            "kind": self.kind,
            "namespace": self.namespace,
            "name": self.name,
            "path": self.path,
            "message": self.message,
        }

    def __str__(self) -> str:
        where = self.file
        if self.document is not None:
            where += f" document {self.document}"
        if self.kind:
            where += f" {self.kind}"
        if self.name:
            where += f" {self.namespace or DEFAULT_NAMESPACE}/{self.name}"
        field_part = f" {self.path}:" if self.path else ":"
        return f"{where}{field_part} {self.message}"


def format_host_port(host: str, port: int) -> str:
    """``host:port``, an IPv6 address in brackets (``[fd00::1]:80``)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True, order=True)
class Endpoint:
    """One ready backend address of a service port (target port already resolved)."""

    ip: str
    port: int

    def __str__(self) -> str:
        return format_host_port(self.ip, self.port)


class TargetRef(NamedTuple):
    """What an endpoint points at (``targetRef``), usually the Pod: for status and validate."""

    kind: str = ""
    namespace: str = ""
    name: str = ""
    uid: str = ""

    def to_dict(self) -> dict:
        return {k: v for k, v in zip(self._fields, self) if v}


class EndpointInfo(NamedTuple):
    """One endpoint of a service port with what the manifests say about it.

    From an EndpointSlice: the conditions as kube-proxy reads them (an unset ``ready`` or
    ``serving`` is true, an unset ``terminating`` false), ``nodeName``, ``zone``,
    ``hints.forZones`` / ``hints.forNodes`` (names, sorted), ``hostname`` and ``targetRef``.
    From Endpoints (v1): ``addresses`` are ready, ``notReadyAddresses`` neither ready nor
    serving, plus ``nodeName``, ``hostname`` and ``targetRef`` (no zone, no hints).

    A NamedTuple rather than a frozen dataclass: a build makes one per endpoint and port of
    every Service, and a tuple is built at C speed (10,000 Services: 0.3 s less).
    """

    address: Endpoint
    ready: bool = True
    serving: bool = True
    terminating: bool = False
    node_name: str | None = None
    zone: str | None = None
    zone_hints: tuple[str, ...] = ()
    node_hints: tuple[str, ...] = ()
    hostname: str | None = None
    target_ref: TargetRef | None = None

    @property
    def ip(self) -> str:
        return self.address.ip

    @property
    def port(self) -> int:
        return self.address.port

    def __str__(self) -> str:
        return str(self.address)

    def to_dict(self) -> dict:
        """The JSON shape `edgeproxy status` and `validate -o json` print (API field names)."""
        out: dict = {"address": str(self.address), "ready": self.ready, "serving": self.serving,
                     "terminating": self.terminating}
        if self.node_name:
            out["nodeName"] = self.node_name
        if self.zone:
            out["zone"] = self.zone
        if self.zone_hints or self.node_hints:
            out["hints"] = {k: list(v) for k, v in (("forZones", self.zone_hints),
                                                    ("forNodes", self.node_hints)) if v}
        if self.hostname:
            out["hostname"] = self.hostname
        if self.target_ref is not None:
            out["targetRef"] = self.target_ref.to_dict()
        return out


# Service fields that decide which endpoints a node uses (kube-proxy's values and defaults).
POLICY_CLUSTER = "Cluster"
POLICY_LOCAL = "Local"
# spec.trafficDistribution values: PreferClose is the deprecated alias of PreferSameZone.
TRAFFIC_DISTRIBUTIONS = ("PreferClose", "PreferSameZone", "PreferSameNode")
TOPOLOGY_MODE_ANNOTATION = "service.kubernetes.io/topology-mode"
# Its name before Kubernetes 1.27, still honoured by the EndpointSlice controller.
TOPOLOGY_HINTS_ANNOTATION = "service.kubernetes.io/topology-aware-hints"


@dataclass(frozen=True)
class TrafficPolicy:
    """A Service's traffic policies as kube-proxy applies them to each of its ports."""

    internal: str = POLICY_CLUSTER  # spec.internalTrafficPolicy (unset: Cluster)
    external: str = POLICY_CLUSTER  # spec.externalTrafficPolicy (unset: Cluster)
    distribution: str | None = None  # spec.trafficDistribution as written
    topology_mode: str | None = None  # the topology-mode (or topology-aware-hints) annotation
    # True when no EndpointSlice carried hints and edgeproxy filled them in from
    # spec.trafficDistribution the way the EndpointSlice controller would (docs/endpoints.md).
    hints_derived: bool = False

    def to_dict(self) -> dict:
        out: dict = {"internalTrafficPolicy": self.internal,
                     "externalTrafficPolicy": self.external}
        if self.distribution:
            out["trafficDistribution"] = self.distribution
        if self.topology_mode:
            out["topologyMode"] = self.topology_mode
        if self.hints_derived:
            out["hintsDerived"] = True
        return out


@dataclass(frozen=True, order=True)
class ServicePortKey:
    """Identity of one proxied service port: kube-proxy's ServicePortName plus protocol."""

    namespace: str
    name: str
    port_name: str
    protocol: Protocol

    @property
    def comment(self) -> str:
        """kube-proxy's rule comment: ``ns/name`` or ``ns/name:portName``."""
        base = f"{self.namespace}/{self.name}"
        return f"{base}:{self.port_name}" if self.port_name else base

    def __str__(self) -> str:
        return f"{self.comment}/{self.protocol.value}"


class LoadBalancerKind(str, Enum):
    ROUND_ROBIN = "ROUND_ROBIN"  # kube-proxy default: round robin over a shuffled list
    RANDOM = "RANDOM"
    CONSISTENT_HASH_SOURCE_IP = "CONSISTENT_HASH_SOURCE_IP"
    CONSISTENT_HASH_HTTP_HEADER = "CONSISTENT_HASH_HTTP_HEADER"


@dataclass(frozen=True)
class LoadBalancerPolicy:
    """EdgeMesh's per-service policy from an Istio DestinationRule (absent: ROUND_ROBIN)."""

    kind: LoadBalancerKind = LoadBalancerKind.ROUND_ROBIN
    http_header_name: str | None = None  # only for CONSISTENT_HASH_HTTP_HEADER
    source: SourceRef | None = None


@dataclass(frozen=True)
class ServicePort:
    """One entry of the desired state: a (service, port, protocol) edgeproxy must capture."""

    key: ServicePortKey
    port: int
    cluster_ips: tuple[str, ...]  # ClusterIP first, then the other family from clusterIPs
    node_port: int | None = None
    external_ips: tuple[str, ...] = ()
    load_balancer_ips: tuple[str, ...] = ()
    session_affinity: bool = False  # sessionAffinity: ClientIP
    affinity_timeout: int = DEFAULT_AFFINITY_TIMEOUT_SECONDS
    endpoints: tuple[Endpoint, ...] = ()  # sorted, deduplicated, ready only
    lb_policy: LoadBalancerPolicy = field(default_factory=LoadBalancerPolicy)
    source: SourceRef | None = None
    # Every endpoint the manifests list for this port, ready or not, with its metadata (sorted
    # by address); empty for a ServicePort written by hand: `infos` then reads ``endpoints``.
    endpoint_info: tuple[EndpointInfo, ...] = ()
    traffic: TrafficPolicy = field(default_factory=TrafficPolicy)

    @property
    def vips(self) -> tuple[str, ...]:
        """Every destination address captured like a ClusterIP (ClusterIPs + LB ingress IPs)."""
        return self.cluster_ips + self.load_balancer_ips

    @property
    def infos(self) -> tuple[EndpointInfo, ...]:
        """The endpoints with their metadata (``endpoints`` as ready ones when none given)."""
        return self.endpoint_info or tuple(EndpointInfo(ep) for ep in self.endpoints)

    # -- traffic policies, as kube-proxy's BaseServicePortInfo answers them ----------------------

    @property
    def externally_accessible(self) -> bool:
        """Reachable through a NodePort, an external IP or a load-balancer IP."""
        return bool(self.node_port or self.external_ips or self.load_balancer_ips)

    @property
    def internal_policy_local(self) -> bool:
        return self.traffic.internal == POLICY_LOCAL

    @property
    def external_policy_local(self) -> bool:
        """externalTrafficPolicy: Local counts only where there is an external path."""
        return self.externally_accessible and self.traffic.external == POLICY_LOCAL

    @property
    def uses_cluster_endpoints(self) -> bool:
        # Even with externalTrafficPolicy Local an externally accessible port needs the Cluster
        # set: traffic from the node itself to its external addresses uses it (kube-proxy's
        # short-circuit for locally originated traffic).
        return not self.internal_policy_local or self.externally_accessible

    @property
    def uses_local_endpoints(self) -> bool:
        return self.internal_policy_local or self.external_policy_local

    # -- which listener each path reaches (docs/endpoints.md, "two listeners") -----------------
    # The main listener serves cluster IPs with the internal policy's endpoints. A port whose
    # external paths need the other set gets a second listener: pod (and remote) traffic to an
    # external address follows externalTrafficPolicy; traffic from the node itself to an
    # external address always uses the Cluster set, as in kube-proxy.

    @property
    def second_listener(self) -> bool:
        return self.externally_accessible and (self.internal_policy_local
                                               or self.external_policy_local)

    @property
    def external_from_pods_uses_second(self) -> bool:
        return self.second_listener and self.external_policy_local != self.internal_policy_local

    @property
    def external_from_host_uses_second(self) -> bool:
        return self.second_listener and self.internal_policy_local


class Verdict(str, Enum):
    PROXY = "proxy"
    SKIP = "skip"


class SkipReason(str, Enum):
    LABEL = "label"
    EXTERNALNAME = "externalname"
    HEADLESS = "headless"
    NO_CLUSTER_IP = "no-cluster-ip"
    INVALID_CLUSTER_IP = "invalid-cluster-ip"
    NO_PORTS = "no-ports"
    INVALID = "invalid"  # the document failed validation
    CONFLICT = "conflict"  # lost a deterministic conflict (see README)


@dataclass(frozen=True)
class ServiceVerdict:
    """What edgeproxy decided for one Service document, for `validate`, status and metrics."""

    source: SourceRef
    namespace: str
    name: str
    verdict: Verdict
    reason: SkipReason | None
    ports: tuple[ServicePortKey, ...] = ()


@dataclass(frozen=True)
class Conflict:
    """Two objects claiming the same thing; ``winner`` is kept, ``loser`` ignored and reported."""

    what: str  # e.g. "service default/web defined twice" or "198.18.0.10:80/TCP claimed twice"
    winner: SourceRef
    loser: SourceRef


@dataclass(frozen=True)
class DesiredState:
    """The complete result of loading a manifest directory: what to proxy and why not the rest."""

    ports: Mapping[ServicePortKey, ServicePort]
    services: tuple[ServiceVerdict, ...] = ()
    errors: tuple[ManifestError, ...] = ()
    conflicts: tuple[Conflict, ...] = ()
    ignored_kinds: Mapping[str, int] = field(default_factory=dict)  # kind -> count


@dataclass(frozen=True)
class ListenAddresses:
    """Where proxy listeners bind and where the nat rules DNAT to (one per address family)."""

    ipv4: str = "169.254.96.17"
    ipv6: str | None = "fd65:6467:6570::1"
    interface: str = "edgeproxy0"
    # The DNS server's addresses (edgeproxy/dns), kept on the same interface the same way.
    dns: tuple[str, ...] = ()


# --- What the manifest loader hands to the state builder. ---


@dataclass(frozen=True)
class LoadLimits:
    """Bounds on what one manifest file may cost to load (all configurable, defaults like etcd)."""

    max_document_bytes: int = 1536 * 1024  # etcd's object limit; per kind: List item too
    max_file_bytes: int = 64 * 1024 * 1024  # a `kubectl get -o yaml` dump of a big cluster
    max_alias_expansion: int = 100_000  # nodes aliases may add beyond the document's own nodes
    # YAML nodes one document (a kind: List dump counts as one) may compose into, estimated
    # from the bytes before parsing: composing costs ~300 bytes of memory per node, so this
    # caps one document at a few hundred MB instead of letting a 60 MiB list take gigabytes.
    # A `kubectl get svc -A -o yaml` of 10,000 Services is ~1M.
    max_document_nodes: int = 2_000_000
    max_file_nodes: int = 8_000_000  # the same estimate for the whole file (bounds parse time)
    max_depth: int = 16  # directory depth below the root
    max_files: int = 100_000  # files per root


@dataclass(frozen=True, eq=False)
class KubeObject:
    """One loaded manifest object. ``body`` is the parsed document: treat it as read-only.

    Compared by identity (``eq=False``): an unchanged file keeps serving the very same objects,
    which lets the state builder reuse what it derived from them.
    """

    kind: str
    api_version: str
    namespace: str  # DEFAULT_NAMESPACE when metadata.namespace is omitted
    name: str
    source: SourceRef
    body: Mapping

    @property
    def identity(self) -> tuple[str, str, str]:
        return (self.kind, self.namespace, self.name)

    @cached_property
    def order(self) -> tuple:
        """Sort key: file path, then document index numerically ("10" after "9")."""
        return (self.source.file,
                tuple(int(p) if p.isdigit() else -1 for p in self.source.document.split("/")))
