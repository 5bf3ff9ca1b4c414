"""`edgeproxy cleanup`: remove every jump, chain and table edgeproxy owns (all backends)."""

from __future__ import annotations

import argparse

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
                   help="which backend to clean (default all)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edgeproxy.rules.cleanup import cleanup_all

    report = cleanup_all(args.iptables_backend)
    for what in report.removed:
        print(f"removed {what}")
    for err in report.errors:
        print(f"error   {err}")
    if not report.removed and not report.errors:
        print("nothing to remove")
    return 0 if report.ok else 1
