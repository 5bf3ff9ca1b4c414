"""`edgeproxy status`: ask the running daemon what it serves, skips and rejects."""

from __future__ import annotations

import argparse

from edgeproxy.commands._settings import add_config_options, add_output_option


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "status", help="show what the running daemon proxies, skips and rejects",
        description="Query the daemon's /status (healthz server) and print services "
                    "(VIP:port/proto -> proxy port -> endpoints), skipped services with reasons "
                    "and file errors.")
    add_output_option(parser)
    add_config_options(parser, ["healthz_bind_address"])
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


def daemon_address(args: argparse.Namespace, command: str) -> str:
    """Where the daemon's healthz server listens: --healthz-bind-address, else the config
    file's healthzBindAddress, else the default (what `edgeproxy run` would use)."""
    from edgeproxy.commands._settings import resolve
    from edgeproxy.model import format_host_port

    return format_host_port(*resolve(args, command)["healthz_bind_address"])


def run(args: argparse.Namespace) -> int:
    import json
    import sys

    from edgeproxy.commands._settings import dump
    from edgeproxy.daemon.status import render_text

    address = daemon_address(args, "status")
    try:
        code, body = fetch(address, "/status")
    except (OSError, ValueError) as exc:
        print(f"edgeproxy status: cannot reach the daemon at {address}: {exc} "
              "(is `edgeproxy run` running? see --config / --healthz-bind-address)",
              file=sys.stderr)
        return 1
    if code != 200:
        print(f"edgeproxy status: daemon answered HTTP {code}", file=sys.stderr)
        return 1
    doc = json.loads(body)
    if args.output != "text":
        sys.stdout.write(dump(doc, args.output))
    else:
        sys.stdout.write(render_text(doc))
    return 1 if doc.get("guard", {}).get("held") else 0
