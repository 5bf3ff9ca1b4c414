"""`edgeproxy status`: ask the running daemon what it serves, skips and rejects."""

from __future__ import annotations

import argparse

DEFAULT_ADDRESS = "127.0.0.1:10266"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "status", help="show what the running daemon proxies, skips and rejects",
        description="Query the daemon's /status (healthz server) and print services "
                    "(VIP:port/proto -> proxy port -> endpoints), skipped services with reasons "
                    "and file errors.")
    parser.add_argument("-o", "--output", choices=("text", "json"), default="text")
    parser.add_argument("--address", default=DEFAULT_ADDRESS,
                        help=f"the daemon's --healthz-bind-address (default {DEFAULT_ADDRESS})")
    parser.set_defaults(func=run)


def fetch(address: str, path: str, method: str = "GET", timeout: float = 5.0) -> tuple[int, bytes]:
    import http.client

    host, _, port = address.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def run(args: argparse.Namespace) -> int:
    import json
    import sys

    from edgeproxy.daemon.status import render_text

    try:
        code, body = fetch(args.address, "/status")
    except (OSError, ValueError) as exc:
        print(f"edgeproxy status: cannot reach the daemon at {args.address}: {exc} "
              "(is `edgeproxy run` running? see --address)", file=sys.stderr)
        return 1
    if code != 200:
        print(f"edgeproxy status: daemon answered HTTP {code}", file=sys.stderr)
        return 1
    doc = json.loads(body)
    if args.output == "json":
        print(json.dumps(doc, indent=2))
    else:
        sys.stdout.write(render_text(doc))
    return 1 if doc.get("guard", {}).get("held") else 0
