"""The demo's backend servers, one process in the backends namespace: HTTP servers answering
with their name (web-1/2/3 :8080), a TCP echo (:7000) and a metrics page (:9100).

Run as ``python -m edgeproxy.demo.backends SPEC_JSON`` by `topology.Topology` (inside
``ip netns exec``); stdlib threads; prints one line "ready" once every socket is bound and
serves until SIGTERM/SIGINT.
"""

from __future__ import annotations

import json
import signal
import socketserver
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Sequence

from edgeproxy.demo.topology import ECHO_PORT, METRICS_PORT, WEB_PORT


def serve(spec: dict) -> None:
    """Backend server process: HTTP name servers, TCP echo and a metrics page, all threaded."""

    class Quiet(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 512

        def server_bind(self) -> None:
            # HTTPServer.server_bind does a reverse DNS lookup (getfqdn): seconds of resolver
            # timeouts in a namespace without DNS. Skip it.
            socketserver.TCPServer.server_bind(self)
            self.server_name, self.server_port = self.server_address[:2]

    def name_handler(name: str, body_fn) -> type[BaseHTTPRequestHandler]:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                body = body_fn(name, self).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:  # no per-request log lines
                pass

        return Handler

    def web_body(name: str, req: BaseHTTPRequestHandler) -> str:
        return f"{name}\n"

    def metrics_body(name: str, req: BaseHTTPRequestHandler) -> str:
        return f"# node-metrics stand-in on {name}\nnode_up 1\n"

    class Echo(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            for line in self.rfile:
                self.wfile.write(f"{self.server.echo_name}: ".encode() + line)  # type: ignore

    class EchoServer(socketserver.ThreadingTCPServer):
        daemon_threads = True
        allow_reuse_address = True
        request_queue_size = 512

    # Blocked before the threads start so only sigwait() below receives them.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    servers: list[socketserver.BaseServer] = []
    for name, addr in spec["web"].items():
        servers.append(Quiet((addr, WEB_PORT), name_handler(name, web_body)))
    for name, addr in spec["echo"].items():
        srv = EchoServer((addr, ECHO_PORT), Echo)
        srv.echo_name = name  # type: ignore[attr-defined]
        servers.append(srv)
    for name, addr in spec["metrics"].items():
        servers.append(Quiet((addr, METRICS_PORT), name_handler(name, metrics_body)))
    for srv in servers:
        threading.Thread(target=srv.serve_forever, daemon=True).start()
    print("ready", flush=True)
    signal.sigwait({signal.SIGTERM, signal.SIGINT})


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) == 1:
        serve(json.loads(args[0]))
        return 0
    print("usage: python -m edgeproxy.demo.backends SPEC_JSON", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
