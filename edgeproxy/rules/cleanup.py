"""Cleanup across backends for `edgeproxy cleanup`: every step is tried, every result reported.

Before removing iptables chains their UDP captures are collected, and afterwards the matching
conntrack entries are deleted, so DNS flows fall back to kube-proxy at once.
"""

from __future__ import annotations

from edgeproxy.model import RULE_BACKENDS
from edgeproxy.tools import Runner

from .backends import make_backend
from .backends.base import BackendError, CleanupReport
from .conntrack import flush_udp_flows
from .render import OWN_CHAINS


def _udp_captures(backend, family: int) -> list[tuple[str | None, int]]:
    try:
        nat = backend.read(family, "nat")
    except BackendError:
        return []
    targets = []
    for chain in OWN_CHAINS["nat"]:
        for rule in (nat.rules(chain) if nat else []):
            if rule.option("-p") == "udp" and rule.option("--dport"):
                dst = rule.option("-d")
                targets.append((dst.split("/")[0] if dst else None, int(rule.option("--dport"))))
    return targets


def cleanup_all(which: str = "all", runner: Runner | None = None) -> CleanupReport:
    if which == "auto":
        from .backends.detect import detect
        names = [detect(runner)[0]]
    elif which == "all":
        names = list(RULE_BACKENDS)
    else:
        names = [which]
    report = CleanupReport()
    udp: list[tuple[str | None, int]] = []
    for name in names:
        backend = make_backend(name, runner)
        if name in ("legacy", "nft"):
            udp += _udp_captures(backend, 4) + _udp_captures(backend, 6)
        try:
            report.extend(backend.cleanup())
        except Exception as exc:  # noqa: BLE001 - report and go on with the next backend
            report.errors.append(f"{name}: {exc}")
    if udp:
        deleted = flush_udp_flows(udp, runner)
        if deleted:
            report.removed.append(f"{deleted} UDP conntrack entries")
    return report
