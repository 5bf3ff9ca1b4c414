"""`edgeproxy validate PATH...`: load manifests like the daemon does and report what it would do.

Exit status: 0 every document is valid, 1 any error (including a PATH that does not exist),
2 usage error (argparse). Only argparse and the (stdlib-only) model are imported at module
level (see cli.py).
"""

from __future__ import annotations

import argparse

from edgeproxy.commands._settings import add_config_options, add_output_option


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "validate", help="validate manifests and show which services would be proxied",
        description="Load Service, Endpoints, EndpointSlice and DestinationRule manifests from "
                    "files or directories, report every error (file, document, field) and the "
                    "verdict for every Service. Exit 0 when all documents are valid, 1 otherwise.")
    p.add_argument("paths", nargs="+", metavar="PATH", help="manifest file or directory")
    add_output_option(p)
    add_config_options(p, ["service_filter_mode", "trusted_manifest_roots", "service_cidr",
                           "allow_insecure_manifests"])
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from edgeproxy.commands._settings import dump, resolve
    from edgeproxy.manifests import load_objects
    from edgeproxy.manifests.reader import trust_policy
    from edgeproxy.model import FilterMode
    from edgeproxy.state import build_state
    from edgeproxy.state.allocation import ServiceCIDRs, assign

    settings = resolve(args, "validate")
    # What the daemon would read: as root, the same ownership rule (manifests/reader.py).
    policy = trust_policy(settings["trusted_manifest_roots"],
                          settings["allow_insecure_manifests"])
    objects, errors = load_objects([Path(p) for p in args.paths], policy=policy)
    mode = FilterMode(settings["service_filter_mode"])
    objects, allocation = assign(objects, ServiceCIDRs.parse(settings["service_cidr"]), mode)
    state = build_state(objects, mode, errors)
    report = build_report(objects, state, allocation)
    if args.output != "text":
        sys.stdout.write(dump(report, args.output))
    else:
        sys.stdout.write(render_text(report, state))
    return 0 if report["valid"] else 1


def build_report(objects, state, allocation) -> dict:
    """The `-o json` object (see docs/manifests.md for the shape). ``allocation``: the
    cluster IPs `--service-cidr` gave (state/allocation.py)."""
    from edgeproxy.state.endpoints import traffic_policy
    from edgeproxy.state.filtering import service_vips

    allocated, unallocated = allocation.addresses, allocation.unallocated

    bodies = {(o.source.file, o.source.document): o.body for o in objects if o.kind == "Service"}
    # Each Service's proxied ports, looked up by (source, port name, protocol): a scan of
    # every port per Service port was 50 million comparisons at 10,000 Services.
    proxied_by: dict[tuple, object] = {}
    for key, sp in state.ports.items():
        proxied_by.setdefault((sp.source, key.port_name, key.protocol.value), sp)
    services = []
    for verdict in state.services:
        body = bodies.get((verdict.source.file, verdict.source.document)) or {}
        spec = body.get("spec") or {}
        ports = []
        for p in spec.get("ports") or []:
            name = p.get("name") or ""
            protocol = p.get("protocol") or "TCP"
            proxied = proxied_by.get((verdict.source, name, protocol)) \
                if verdict.verdict.value == "proxy" else None
            entry = {
                "name": name,
                "port": p.get("port"),
                "protocol": protocol,
                "vips": list(proxied.vips) if proxied else list(service_vips(spec)),
                "endpoints": [str(e) for e in proxied.endpoints] if proxied else [],
                "proxied": proxied is not None,
                # Every endpoint with its conditions, node, zone, hints and target.
                "endpointDetails": [i.to_dict() for i in proxied.infos] if proxied else [],
            }
            if proxied is not None and proxied.traffic.hints_derived:
                entry["hintsDerived"] = True
            if proxied is not None and proxied.lb_policy.source is not None:
                policy = proxied.lb_policy
                entry["lbPolicy"] = policy.kind.value + (
                    f" {policy.http_header_name}" if policy.http_header_name else "")
            ports.append(entry)
        services.append({
            "file": verdict.source.file,
            "document": verdict.source.document,
            "namespace": verdict.namespace,
            "name": verdict.name,
            "verdict": verdict.verdict.value,
            "reason": verdict.reason.value if verdict.reason else None,
            "trafficPolicy": traffic_policy(body).to_dict(),
            "ports": ports,
            "allocatedClusterIPs": list(allocated.get((verdict.namespace, verdict.name), ())),
            **({"unallocated": unallocated[(verdict.namespace, verdict.name)]}
               if (verdict.namespace, verdict.name) in unallocated else {}),
        })
    return {
        "valid": not state.errors,
        "errors": [e.to_dict() for e in state.errors],
        "services": services,
        "conflicts": [{"what": c.what, "winner": str(c.winner), "loser": str(c.loser)}
                      for c in state.conflicts],
        "ignoredKinds": dict(sorted(state.ignored_kinds.items())),
    }


def render_text(report: dict, state) -> str:
    lines = []
    for err in state.errors:
        lines.append(f"error: {err}")
    for svc in report["services"]:
        head = f"{svc['namespace']}/{svc['name']} ({svc['file']}#{svc['document']})"
        if svc["verdict"] == "skip":
            why = f" ({svc['unallocated']})" if svc.get("unallocated") else ""
            lines.append(f"skip   {head}: {svc['reason']}{why}")
            continue
        allocated = svc.get("allocatedClusterIPs") or []
        lines.append(f"proxy  {head}" + (f" clusterIP {', '.join(allocated)} (allocated)"
                                         if allocated else ""))
        policy = svc.get("trafficPolicy") or {}
        notes = [f"{k} {policy[k]}" for k in ("internalTrafficPolicy", "externalTrafficPolicy")
                 if policy.get(k) not in (None, "Cluster")]
        notes += [f"{k} {policy[k]}" for k in ("trafficDistribution", "topologyMode")
                  if policy.get(k)]
        if notes:
            lines.append(f"         {', '.join(notes)}")
        for p in svc["ports"]:
            label = f"{p['name'] or '-'} {p['port']}/{p['protocol']}"
            if not p["proxied"]:
                why = "SCTP is not proxied" if p["protocol"] == "SCTP" else "lost a VIP conflict"
                lines.append(f"         {label}: not proxied ({why})")
                continue
            backends = ", ".join(p["endpoints"]) or "no ready endpoints"
            lb = f" ({p['lbPolicy']})" if "lbPolicy" in p else ""
            lines.append(f"         {label} on {', '.join(p['vips'])} -> {backends}{lb}")
            for ep in p.get("endpointDetails") or []:
                lines.append(f"             {_describe(ep)}")
    for c in report["conflicts"]:
        lines.append(f"conflict: {c['what']}: {c['winner']} wins over {c['loser']}")
    if report["ignoredKinds"]:
        ignored = ", ".join(f"{k} x{n}" for k, n in report["ignoredKinds"].items())
        lines.append(f"ignored kinds: {ignored}")
    proxied = sum(1 for s in report["services"] if s["verdict"] == "proxy")
    lines.append(f"{len(report['services'])} services ({proxied} proxied, "
                 f"{len(state.ports)} service ports), {len(state.errors)} errors")
    return "\n".join(lines) + "\n"


def _describe(ep: dict) -> str:
    """One endpoint as `validate` prints it: address, conditions, where it runs, hints."""
    state = "ready" if ep["ready"] else ("terminating" if ep["terminating"] else "not ready")
    if ep["terminating"] and ep["ready"]:
        state = "ready, terminating"
    if not ep["ready"] and ep["terminating"]:
        state += ", serving" if ep["serving"] else ", not serving"
    parts = [ep["address"], state]
    where = "/".join(v for v in (ep.get("zone"), ep.get("nodeName")) if v)
    if where:
        parts.append(f"on {where}")
    hints = ep.get("hints") or {}
    if hints:
        parts.append("hints " + " ".join(f"{k}={','.join(v)}" for k, v in hints.items()))
    ref = ep.get("targetRef")
    if ref:
        parts.append(f"{ref.get('kind', '')} {ref.get('name', '')}".strip())
    return "  ".join(parts)
