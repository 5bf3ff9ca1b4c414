"""`edgeproxy demo`: run the main job end to end in private network namespaces (see
edgeproxy/demo.py). Needs root; changes nothing on the host."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="show edgeproxy working end to end in throw-away network namespaces",
        description="Builds a pod, a node and backends in private network namespaces, a "
                    "stand-in kube-proxy, runs the real `edgeproxy run` on a copy of the "
                    "example manifests and shows traffic through the cluster IPs, the "
                    "labelled service left to kube-proxy, a hot reload and the chain-order "
                    "repair. Removes everything again (also on Ctrl-C). Needs root.")
    parser.add_argument("--manifests", metavar="DIR", default=None,
                        help="manifest directory to copy and serve "
                             "(default: the example manifests shipped with edgeproxy, "
                             "config/examples in the repository)")
    parser.add_argument("--keep", action="store_true",
                        help="leave the namespaces and the daemon running after the walkthrough "
                             "until Ctrl-C, to try things by hand")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from edgeproxy.demo import default_manifests, run_demo

    manifests = Path(args.manifests) if args.manifests else default_manifests()
    return run_demo(manifests.resolve(), keep=args.keep)
