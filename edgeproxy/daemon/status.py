"""The /status document (built from the daemon) and its text rendering for `edgeproxy status`.

The document is plain JSON, built from what `views.DaemonView` exposes; `render_text` is pure
so it is tested without a daemon.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable, Mapping

if TYPE_CHECKING:  # `edgeproxy status` imports this module for render_text alone: keep it light
    from edgeproxy.daemon.views import DaemonView
    from edgeproxy.forwarding.stats import PortEndpointsReport, ServiceStats
    from edgeproxy.model import ServicePortKey


def _file_errors(daemon: DaemonView) -> list[dict]:
    computed = daemon.last_computed
    errors = computed.errors if computed is not None else daemon.applied.errors
    return [e.to_dict() for e in errors]


def _ask_proxy(daemon: DaemonView, question: Callable[[Any], Mapping]) -> Mapping:
    """What the proxy answers, or nothing: status must answer even when a piece misbehaves."""
    if daemon.proxy is None:
        return {}
    try:
        return question(daemon.proxy)
    except Exception:  # noqa: BLE001 - see the docstring
        return {}


def _endpoints(sp: Any, report: PortEndpointsReport | None) -> list[dict[str, Any]]:
    """Every endpoint of the port: what the manifests say, merged with what this node does
    with it (locality, used, health)."""
    out = []
    for info in sp.infos:
        entry = info.to_dict()
        seen = report.endpoints.get(entry["address"]) if report is not None else None
        if seen is not None:
            entry.update(seen.to_dict())
        out.append(entry)
    return out


def _selection(report: PortEndpointsReport | None) -> dict[str, Any] | None:
    if report is None:
        return None
    out: dict[str, Any] = {"topology": report.topology_mode or None, "policy": report.policy,
                           "refused": report.refused, "panic": report.panic}
    if report.second_policy is not None:
        out["secondListener"] = {"policy": report.second_policy,
                                 "refused": report.second_refused}
    return out


def _watcher(daemon: DaemonView) -> dict[str, Any] | None:
    watcher = daemon.watcher
    if watcher is None:
        return None
    return {"running": watcher.running, "eventsTotal": watcher.events_total,
            "restartsTotal": watcher.restarts_total, "watchdog": watcher.watchdog_version}


def _dns(daemon: DaemonView) -> dict[str, Any] | None:
    if daemon.dns is None:
        return None
    try:
        return daemon.dns.status()
    except Exception as exc:  # noqa: BLE001 - status must answer even when a piece misbehaves
        return {"error": str(exc)}


def build_status(daemon: DaemonView) -> dict[str, Any]:
    from edgeproxy.forwarding.stats import ServiceStats

    no_stats = ServiceStats()  # a service port the forwarder does not (yet) report on
    state = daemon.applied
    stats: Mapping[ServicePortKey, ServiceStats] = _ask_proxy(daemon, lambda p: p.stats())
    computed = daemon.last_computed
    allocated = computed.allocated if computed is not None else {}
    reports: Mapping[ServicePortKey, PortEndpointsReport] = _ask_proxy(
        daemon, lambda p: p.endpoint_reports())
    services = []
    for key in sorted(state.ports):
        sp = state.ports[key]
        st = stats.get(key, no_stats)
        services.append({
            "service": key.comment,
            "protocol": key.protocol.value,
            "vips": [f"{vip}:{sp.port}" for vip in sp.vips],
            # The cluster IP came from --service-cidr, not from the manifest.
            "allocated": (key.namespace, key.name) in allocated,
            "proxyPort": daemon.proxy_ports.get(key),
            "endpoints": [str(ep) for ep in sp.endpoints],
            "sessionAffinity": sp.session_affinity,
            "loadBalancer": sp.lb_policy.kind.value,
            "activeConnections": st.active_connections,
            "connectionsTotal": st.connections_total,
            "udpSessions": st.udp_sessions,
            "dialFailuresTotal": st.dial_failures_total,
            # Which endpoints this node uses and how they answer (docs/endpoints.md).
            "trafficPolicy": sp.traffic.to_dict(),
            "selection": _selection(reports.get(key)),
            "endpointDetails": _endpoints(sp, reports.get(key)),
            "endpointEjectionsTotal": st.endpoint_ejections_total,
            "endpointReadmissionsTotal": st.endpoint_readmissions_total,
            "probesTotal": st.probes_total,
            "probeFailuresTotal": st.probe_failures_total,
            "refusedNoLocalTotal": st.refused_no_local_total,
        })
    skipped = [{"service": f"{v.namespace}/{v.name}", "reason": v.reason.value if v.reason else None,
                "source": str(v.source)}
               for v in state.services if v.verdict.value == "skip"]
    keeper = daemon.keeper
    held = daemon.held
    try:
        problems = daemon.health_problems()
    except Exception as exc:  # noqa: BLE001 - status must answer even when a piece misbehaves
        problems = [f"cannot check health: {exc}"]
    return {
        "ready": daemon.ready,
        "healthy": not problems,
        "problems": problems,
        "manifests": str(daemon.config.manifests),
        "rootError": computed.root_error if computed is not None else None,
        "backend": keeper.backend.name if keeper is not None else None,
        "listen": {"ipv4": daemon.listen.ipv4, "ipv6": daemon.listen.ipv6,
                   "interface": daemon.listen.interface},
        "node": {"name": daemon.config.node_name, "zone": daemon.config.zone,
                 "localityAware": daemon.config.locality_aware},
        "services": services,
        "skipped": skipped,
        "errors": _file_errors(daemon),
        "conflicts": [{"what": c.what, "winner": str(c.winner), "loser": str(c.loser)}
                      for c in state.conflicts],
        "guard": {"held": held is not None, "reason": held.reason if held else None,
                  "wouldRemove": held.removed if held else 0,
                  "maxRemovalRatio": daemon.config.max_removal_ratio,
                  "holdsTotal": daemon.counters.holds_total},
        "watcher": _watcher(daemon),
        "dns": _dns(daemon),
        "allocatedClusterIPs": [
            {"service": f"{ns}/{name}", "clusterIPs": list(ips)}
            for (ns, name), ips in sorted(allocated.items())],
        "unallocated": [{"service": f"{ns}/{name}", "reason": why} for (ns, name), why in
                        sorted((computed.unallocated if computed is not None else {}).items())],
        "retrying": [str(p) for p in computed.retry] if computed is not None else [],
        "dataPathRepairsTotal": daemon.proxy.repairs_total if daemon.proxy is not None else 0,
        "repairs": {"total": keeper.repairs_total if keeper is not None else 0,
                    "last": list(keeper.last_repair_descriptions) if keeper is not None else [],
                    "applyErrorsTotal": keeper.apply_errors_total if keeper is not None else 0},
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
    for problem in doc.get("problems") or []:
        lines.append(f"UNHEALTHY: {problem}")
    if doc.get("retrying"):
        lines.append(f"being written, read again shortly: {', '.join(doc['retrying'])}")
    guard = doc.get("guard") or {}
    if guard.get("held"):
        lines.append(f"HELD: {guard.get('reason')} -- still serving the last good state; "
                     "run `edgeproxy confirm-removal` to apply")
    node = doc.get("node") or {}
    if node:
        lines.append(f"node: {node.get('name') or '-'}  zone: {node.get('zone') or '-'}  "
                     f"locality: {'this node, zone, rest' if node.get('localityAware') else 'off'}")
    services = doc.get("services") or []
    lines.append(f"\nservices ({len(services)}):")
    for s in services:
        vips = ",".join(s.get("vips") or []) or "-"
        eps = ", ".join(s.get("endpoints") or []) or "no endpoints"
        allocated = " (allocated)" if s.get("allocated") else ""
        lines.append(f"  {s['service']} {vips}/{s['protocol']}{allocated} -> "
                     f":{s.get('proxyPort')} -> "
                     f"{eps}  (connections {s.get('activeConnections', 0)}, "
                     f"dial failures {s.get('dialFailuresTotal', 0)})")
        lines += _endpoint_lines(s)
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
    allocated = doc.get("allocatedClusterIPs") or []
    if allocated or doc.get("unallocated"):
        lines.append(f"\ncluster IPs allocated from serviceCIDR ({len(allocated)}):")
        for a in allocated:
            lines.append(f"  {a['service']}: {', '.join(a['clusterIPs'])}")
        for u in doc.get("unallocated") or []:
            lines.append(f"  {u['service']}: none ({u['reason']})")
    dns = doc.get("dns")
    if dns and "error" not in dns:
        lines.append(f"\ndns: {', '.join(dns.get('listen') or [])} for {dns.get('domain')}: "
                     f"{dns.get('services', 0)} services, {dns.get('names', 0)} names; "
                     f"upstreams {', '.join(dns.get('upstreams') or []) or 'none'}"
                     f"{' (DOWN: serving stale)' if dns.get('upstreamsDown') else ''}")
    repairs = doc.get("repairs") or {}
    lines.append(f"\nchain repairs: {repairs.get('total', 0)}")
    return "\n".join(lines) + "\n"


def _endpoint_lines(service: dict[str, Any]) -> list[str]:
    """Indented lines under a service: its policy and each endpoint's state on this node."""
    lines = []
    policy = service.get("trafficPolicy") or {}
    selection = service.get("selection") or {}
    notes = [f"{k} {v}" for k, v in (("internal", policy.get("internalTrafficPolicy")),
                                     ("external", policy.get("externalTrafficPolicy")))
             if v and v != "Cluster"]
    if policy.get("trafficDistribution"):
        notes.append(f"distribution {policy['trafficDistribution']}")
    if policy.get("topologyMode"):
        notes.append(f"topology-mode {policy['topologyMode']}")
    if selection.get("topology"):
        notes.append(f"using hints: {selection['topology']}")
    if selection.get("refused"):
        notes.append("REFUSING: no endpoint on this node")
    if selection.get("panic"):
        notes.append("PANIC: every endpoint ejected, trying all")
    if notes:
        lines.append("      " + "; ".join(notes))
    for ep in service.get("endpointDetails") or []:
        state = ep.get("health")
        if state == "ejected":
            left = ep.get("ejectedForSeconds", 0)
            # TCP endpoints come back when a probe answers; UDP ones when the back-off ends.
            when = f"probing, back-off {left:.1f}s left" if service.get("protocol") == "TCP" \
                else f"on probation in {left:.1f}s"
            state = (f"EJECTED ({when}; {ep.get('consecutiveFailures', 0)} failures"
                     + (f": {ep['lastError']}" if ep.get("lastError") else "") + ")")
        elif ep.get("consecutiveFailures"):
            state = f"{state}, {ep['consecutiveFailures']} failures"
        if not ep.get("ready", True):
            state = ("terminating" if ep.get("terminating") else "not ready") + \
                (f", {state}" if ep.get("used") else "")
        elif ep.get("used") is False:
            state = "not used here"
        where = ep.get("nodeName") or "-"
        lines.append(f"      {ep['address']:<24} {ep.get('locality', '-'):<6} "
                     f"{where:<20} {state or '-'}")
    return lines
