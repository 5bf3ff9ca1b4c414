"""`edgeproxy doctor`: find why traffic may miss edgeproxy; one line to fix each problem."""

from __future__ import annotations

import argparse

from edgeproxy.commands._settings import add_config_options


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "doctor", help="check rules, backend, daemon and conflicting proxies",
        description="Checks: backend matches the node's kube-proxy; jumps present and before "
                    "KUBE-SERVICES; chains not empty while services exist; captured services "
                    "answer; no EdgeMesh agent or Cilium socket LB; conntrack installed. "
                    "Exit status 1 when anything is wrong.")
    add_config_options(p, ["iptables_backend", "healthz_bind_address", "service_filter_mode"])
    p.add_argument("--manifests", metavar="DIR",
                   help="count the service ports here instead of asking the daemon")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from edgeproxy.commands._settings import resolve
    from edgeproxy.model import format_host_port
    from edgeproxy.rules.doctor import Doctor

    settings = resolve(args, "doctor")
    services = None
    if args.manifests:
        from edgeproxy.model import FilterMode
        from edgeproxy.rules.preview import PreviewError, load_desired_state
        try:
            services = len(load_desired_state(
                Path(args.manifests), FilterMode(settings["service_filter_mode"])).ports)
        except PreviewError as exc:
            print(f"edgeproxy doctor: {exc}", file=sys.stderr)
            return 2
    findings = Doctor(settings["iptables_backend"],
                      healthz=format_host_port(*settings["healthz_bind_address"]),
                      services=services).checks()
    for f in findings:
        print(f"{'ok  ' if f.ok else 'FAIL'} {f.what}")
        if not f.ok and f.fix:
            print(f"     fix: {f.fix}")
    bad = sum(not f.ok for f in findings)
    print(f"{bad} problem(s) found" if bad else "all checks passed")
    return 1 if bad else 0
