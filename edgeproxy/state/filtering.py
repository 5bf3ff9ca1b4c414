"""Which Services edgeproxy proxies: EdgeMesh's label filter and the kube-proxy skip rules.

Owns the verdict of one Service object, and nothing else (pure, no I/O). Precedence, when
several rules match: label > externalname > headless > no-cluster-ip > invalid-cluster-ip >
no-ports > proxy (the first reason is the verdict; the rest are returned as ``also``).
"""

from __future__ import annotations

import ipaddress
from typing import Mapping

from edgeproxy.model import SERVICE_PROXY_NAME_LABEL, FilterMode, SkipReason

PROXIED_PROTOCOLS = ("TCP", "UDP")  # SCTP is valid in a Service but edgeproxy cannot relay it


def label_skips(labels: Mapping | None, mode: FilterMode) -> bool:
    """EdgeMesh: the label's presence counts, whatever its value ("" included)."""
    present = bool(labels) and SERVICE_PROXY_NAME_LABEL in labels  # type: ignore[operator]
    if mode == FilterMode.FILTER_IF_LABEL_EXISTS:
        return present
    return not present


def is_headless(spec: Mapping, vips: list[str] | None = None) -> bool:
    """clusterIP None: a Service the cluster gives no virtual IP (its name is its endpoints).
    ``vips``: `service_vips(spec)` where the caller has it already."""
    vips = service_vips(spec) if vips is None else vips
    return spec.get("clusterIP") == "None" or bool(vips and vips[0] == "None")


def service_vips(spec: Mapping) -> list[str]:
    """``clusterIPs``, or ``[clusterIP]`` when clusterIPs is absent ([] when neither is set)."""
    cluster_ips = spec.get("clusterIPs")
    if cluster_ips:
        return list(cluster_ips)
    cluster_ip = spec.get("clusterIP")
    return [cluster_ip] if cluster_ip else []


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def skip_reasons(body: Mapping, mode: FilterMode) -> list[SkipReason]:
    """Every skip rule the Service matches, in precedence order ([] = proxy it)."""
    metadata = body.get("metadata") or {}
    spec = body.get("spec") or {}
    reasons: list[SkipReason] = []
    if label_skips(metadata.get("labels"), mode):
        reasons.append(SkipReason.LABEL)
    if spec.get("type") == "ExternalName":
        reasons.append(SkipReason.EXTERNALNAME)
    vips = service_vips(spec)
    if is_headless(spec, vips):
        reasons.append(SkipReason.HEADLESS)
    elif not vips:
        reasons.append(SkipReason.NO_CLUSTER_IP)
    elif not all(_is_ip(v) for v in vips):
        reasons.append(SkipReason.INVALID_CLUSTER_IP)
    ports = spec.get("ports") or []
    if not any((p.get("protocol") or "TCP") in PROXIED_PROTOCOLS for p in ports):
        reasons.append(SkipReason.NO_PORTS)
    return reasons


def verdict_reason(body: Mapping, mode: FilterMode) -> SkipReason | None:
    """The skip reason that decides (None = proxy)."""
    reasons = skip_reasons(body, mode)
    return reasons[0] if reasons else None
