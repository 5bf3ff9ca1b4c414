"""The /status document (built from the daemon) and its text rendering for `edgeproxy status`.

The document is plain JSON; `render_text` is pure so it is tested without a daemon.
"""

from __future__ import annotations

import time
from typing import Any


def _file_errors(daemon: Any) -> list[dict]:
    computed = daemon.last_computed
    errors = computed.errors if computed is not None else daemon.applied.errors
    return [e.to_dict() for e in errors]


def build_status(daemon: Any) -> dict[str, Any]:
    state = daemon.applied
    stats = {}
    try:
        stats = daemon.proxy.stats() if daemon.proxy is not None else {}
    except Exception:  # noqa: BLE001 - status must answer even when a piece misbehaves
        stats = {}
    services = []
    for key in sorted(state.ports):
        sp = state.ports[key]
        st = stats.get(key)
        services.append({
            "service": key.comment,
            "protocol": key.protocol.value,
            "vips": [f"{vip}:{sp.port}" for vip in sp.vips],
            "proxyPort": daemon.proxy_ports.get(key),
            "endpoints": [str(ep) for ep in sp.endpoints],
            "sessionAffinity": sp.session_affinity,
            "loadBalancer": sp.lb_policy.kind.value,
            "activeConnections": getattr(st, "active_connections", 0),
            "connectionsTotal": getattr(st, "connections_total", 0),
            "udpSessions": getattr(st, "udp_sessions", 0),
            "dialFailuresTotal": getattr(st, "dial_failures_total", 0),
        })
    skipped = [{"service": f"{v.namespace}/{v.name}", "reason": v.reason.value if v.reason else None,
                "source": str(v.source)}
               for v in state.services if v.verdict.value == "skip"]
    keeper = daemon.keeper
    computed = daemon.last_computed
    held = daemon.held
    return {
        "ready": daemon.ready,
        "manifests": str(daemon.config.manifests),
        "rootError": getattr(computed, "root_error", None),
        "backend": getattr(getattr(keeper, "backend", None), "name", None),
        "listen": {"ipv4": daemon.listen.ipv4, "ipv6": daemon.listen.ipv6,
                   "interface": daemon.listen.interface},
        "services": services,
        "skipped": skipped,
        "errors": _file_errors(daemon),
        "conflicts": [{"what": c.what, "winner": str(c.winner), "loser": str(c.loser)}
                      for c in state.conflicts],
        "guard": {"held": held is not None, "reason": held.reason if held else None,
                  "wouldRemove": held.removed if held else 0,
                  "maxRemovalRatio": daemon.config.max_removal_ratio,
                  "holdsTotal": daemon.counters.holds_total},
        "repairs": {"total": getattr(keeper, "repairs_total", 0),
                    "last": list(getattr(keeper, "last_repair_descriptions", []) or []),
                    "applyErrorsTotal": getattr(keeper, "apply_errors_total", 0)},
        "sync": {"total": daemon.counters.syncs_total,
                 "errorsTotal": daemon.counters.sync_errors_total,
                 "lastDurationSeconds": round(daemon.counters.last_sync_seconds, 6),
                 # Where the last sync's time went (compute, listen, render, rules, routes).
                 "lastPhaseSeconds": dict(daemon.last_phases),
                 "lastApplied": daemon.last_applied_wall},
        "currentTime": time.time(),
        "config": daemon.config.to_dict(),
    }


def render_text(doc: dict[str, Any]) -> str:
    """Human-readable status: services, skipped services with reasons, file errors, guard."""
    lines = [f"manifests: {doc.get('manifests')}  backend: {doc.get('backend')}  "
             f"ready: {'yes' if doc.get('ready') else 'no'}"]
    if doc.get("rootError"):
        lines.append(f"manifest root error: {doc['rootError']}")
    guard = doc.get("guard") or {}
    if guard.get("held"):
        lines.append(f"HELD: {guard.get('reason')} -- still serving the last good state; "
                     "run `edgeproxy confirm-removal` to apply")
    services = doc.get("services") or []
    lines.append(f"\nservices ({len(services)}):")
    for s in services:
        vips = ",".join(s.get("vips") or []) or "-"
        eps = ", ".join(s.get("endpoints") or []) or "no endpoints"
        lines.append(f"  {s['service']} {vips}/{s['protocol']} -> :{s.get('proxyPort')} -> "
                     f"{eps}  (connections {s.get('activeConnections', 0)}, "
                     f"dial failures {s.get('dialFailuresTotal', 0)})")
    skipped = doc.get("skipped") or []
    lines.append(f"\nskipped ({len(skipped)}):")
    for s in skipped:
        lines.append(f"  {s['service']}: {s.get('reason')} ({s.get('source')})")
    errors = doc.get("errors") or []
    lines.append(f"\nfile errors ({len(errors)}):")
    for e in errors:
        where = e["file"] + (f" document {e['document']}" if e.get("document") is not None else "")
        what = f" {e['kind']} {e.get('namespace') or 'default'}/{e['name']}" if e.get("name") else ""
        path = f" {e['path']}" if e.get("path") else ""
        lines.append(f"  {where}{what}{path}: {e['message']}")
    repairs = doc.get("repairs") or {}
    lines.append(f"\nchain repairs: {repairs.get('total', 0)}")
    return "\n".join(lines) + "\n"
