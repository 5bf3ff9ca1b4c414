"""`edgeproxy cleanup`: remove every jump, chain and table edgeproxy owns (all backends), and
its listen interface when it is still edgeproxy's."""

from __future__ import annotations

import argparse

from edgeproxy.commands._settings import add_config_options

from edgeproxy.model import BACKEND_CHOICES

CHOICES = ("all", *BACKEND_CHOICES)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "cleanup", help="remove edgeproxy's rules from iptables-legacy, iptables-nft, nftables",
        description="Removes edgeproxy's jumps and chains (KUBE-PORTALS-*, KUBE-NODEPORT-*, "
                    "EDGEPROXY-LISTEN-GUARD) and its nftables tables, IPv4 and IPv6, trying "
                    "every step even when one fails, then deletes the UDP conntrack entries "
                    "of the removed captures so they fall back to kube-proxy. Safe to repeat.")
    p.add_argument("--iptables-backend", default="all", choices=CHOICES,
                   help="which backend to clean (default all: whatever the config says, rules "
                        "a run with another backend left behind go too)")
    add_config_options(p, ["listen_interface"])
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edgeproxy.commands._settings import resolve
    from edgeproxy.forwarding.listen import remove_interface
    from edgeproxy.model import ListenAddresses
    from edgeproxy.rules.cleanup import cleanup_all

    settings = resolve(args, "cleanup")
    report = cleanup_all(args.iptables_backend)
    removed = list(report.removed)
    interface = settings["listen_interface"]
    # Only an interface that still carries edgeproxy's mark (a killed daemon left it).
    if remove_interface(ListenAddresses(interface=interface)):
        removed.append(f"listen interface {interface}")
    for what in removed:
        print(f"removed {what}")
    for err in report.errors:
        print(f"error   {err}")
    if not removed and not report.errors:
        print("nothing to remove")
    return 0 if report.ok else 1
