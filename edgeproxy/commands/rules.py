"""`edgeproxy rules`: print the rules edgeproxy would apply for a manifest directory (no root)."""

from __future__ import annotations

import argparse

from edgeproxy.commands._settings import add_config_options


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "rules", help="print the iptables-restore / nft text edgeproxy would apply",
        description="Render the capture rules for the manifests without touching the system. "
                    "Proxy ports are the daemon's (from STATE_DIR/ports.json) when known, else "
                    "the allocator's deterministic first choice.")
    add_config_options(p, ["manifests", "iptables_backend", "service_filter_mode", "state_dir",
                           "proxy_port_range", "listen_address", "listen_address_v6"])
    p.add_argument("--family", type=int, choices=(4, 6), help="only this address family")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from edgeproxy.commands._settings import resolve
    from edgeproxy.forwarding.ports import PortRange
    from edgeproxy.model import FilterMode, ListenAddresses
    from edgeproxy.rules.preview import PreviewError, load_desired_state, preview_ruleset

    settings = resolve(args, "rules")
    try:
        port_range = PortRange.parse(settings["proxy_port_range"])
        state = load_desired_state(Path(settings["manifests"]),
                                   FilterMode(settings["service_filter_mode"]))
    except (ValueError, PreviewError) as exc:
        print(f"edgeproxy rules: {exc}", file=sys.stderr)
        return 2
    listen = ListenAddresses(ipv4=settings["listen_address"],
                             ipv6=settings["listen_address_v6"] or None)
    ruleset = preview_ruleset(state, listen, Path(settings["state_dir"]), port_range)
    backend = settings["iptables_backend"]
    if backend == "auto":
        from edgeproxy.rules.backends.detect import detect
        try:
            backend, reason = detect()
            print(f"# backend {backend}: {reason}", file=sys.stderr)
        except Exception as exc:  # noqa: BLE001 - detection needs root on most nodes
            backend = "nft"
            print(f"# backend detection failed ({exc}); showing iptables-restore text",
                  file=sys.stderr)
    for err in state.errors:
        print(f"# manifest error: {err}", file=sys.stderr)
    for why in ruleset.skipped:
        print(f"# not captured: {why}", file=sys.stderr)
    families = [f for f in ruleset.families if args.family in (None, f)]
    out = sys.stdout
    for family in families:
        if backend == "nftables":
            out.write(f"# nft -f - (IPv{family})\n")
            out.write(ruleset.nft_text(family))
            continue
        tool = "iptables" if family == 4 else "ip6tables"
        for table in ruleset.tables(family):
            out.write(f"# {tool}-{backend}-restore --noflush -w 5   (IPv{family} {table}; "
                      "jumps are placed before KUBE-SERVICES when applied)\n")
            out.write(ruleset.restore_text(family, table))
    return 0
