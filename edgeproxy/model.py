"""The shared vocabulary of edgeproxy: immutable values passed between the pure core and the shells.

Everything that crosses a module boundary (loader -> state builder -> rule renderer / forwarder ->
daemon / status) is one of these frozen dataclasses, so the pure core can be tested with plain
values and two states can be compared with ``==``.  Nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from functools import cached_property
from typing import Mapping

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


@dataclass(frozen=True, order=True)
class Endpoint:
    """One ready backend address of a service port (target port already resolved)."""

    ip: str
    port: int

    def __str__(self) -> str:
        return f"[{self.ip}]:{self.port}" if ":" in self.ip else f"{self.ip}:{self.port}"


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

    @property
    def vips(self) -> tuple[str, ...]:
        """Every destination address captured like a ClusterIP (ClusterIPs + LB ingress IPs)."""
        return self.cluster_ips + self.load_balancer_ips


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
