"""`edgeproxy confirm-removal`: apply a sync the mass-removal guard is holding."""

from __future__ import annotations

import argparse

from edgeproxy.commands._settings import add_config_options


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "confirm-removal", help="apply a mass removal the daemon is holding",
        description="The daemon holds a sync that would remove more than --max-removal-ratio "
                    "of the proxied ports, or that finds the manifest root missing or empty. "
                    "Check `edgeproxy status` first; this applies it (same as SIGUSR1).")
    add_config_options(parser, ["healthz_bind_address"])
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json
    import sys

    from edgeproxy.commands.status import daemon_address, fetch

    address = daemon_address(args, "confirm-removal")
    try:
        code, body = fetch(address, "/confirm-removal", method="POST")
    except (OSError, ValueError) as exc:
        print(f"edgeproxy confirm-removal: cannot reach the daemon at {address}: {exc}",
              file=sys.stderr)
        return 1
    if code == 200:
        print("confirmed: the held change is being applied")
        return 0
    message = json.loads(body).get("error", body.decode(errors="replace")) if body else code
    print(f"edgeproxy confirm-removal: {message}", file=sys.stderr)
    return 1
