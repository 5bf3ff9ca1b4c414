"""Clients made inside a namespace (the demo's HTTP and echo checks), and polling.

The socket is created with the calling thread inside the namespace (`NetNS.entered`) and used
after it has left: a socket stays in the namespace it was made in.
"""

from __future__ import annotations

import socket
import time
from typing import Callable

from edgeproxy.demo.netns import NetNS


def http_request(ns: NetNS, host: str, port: int = 80, path: str = "/",
                 headers: dict[str, str] | None = None, timeout: float = 2.0,
                 connect_timeout: float | None = None) -> tuple[int, bytes, str]:
    """GET over a fresh connection made inside `ns`: (status code, 0 when the answer is not
    HTTP; status line; body). OSError when it cannot connect or times out. ``connect_timeout``
    (default: ``timeout``) bounds the handshake alone."""
    with ns.entered():
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with sock:
        sock.settimeout(timeout if connect_timeout is None else connect_timeout)
        sock.connect((host, port))
        sock.settimeout(timeout)
        lines = [f"GET {path} HTTP/1.0", f"Host: {host}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        chunks = []
        while True:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0]
    parts = status.split()
    code = int(parts[1]) if status.startswith(b"HTTP/1.") and len(parts) > 1 \
        and parts[1].isdigit() else 0
    return code, status, body.decode(errors="replace")


def http_get(ns: NetNS, host: str, port: int = 80, path: str = "/",
             headers: dict[str, str] | None = None, timeout: float = 2.0,
             connect_timeout: float | None = None) -> str:
    """The body of a 200 answer to a GET made inside `ns` (see `http_request`); any other
    answer raises OSError."""
    code, status, body = http_request(ns, host, port, path, headers, timeout, connect_timeout)
    if code != 200:
        raise OSError(f"unexpected HTTP answer from {host}:{port}: {status[:80]!r}")
    return body


def echo_line(ns: NetNS, host: str, port: int, text: str, timeout: float = 2.0) -> str:
    with ns.entered():
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with sock:
        sock.settimeout(timeout)
        sock.connect((host, port))
        sock.sendall(text.encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    return data.decode(errors="replace").strip()


def wait_until(predicate: Callable[[], object], timeout: float,
               interval: float = 0.02) -> float | None:
    """Poll `predicate()` (exceptions count as False); seconds it took, or None on timeout."""
    start = time.monotonic()
    while True:
        try:
            if predicate():
                return time.monotonic() - start
        except OSError:
            pass
        if time.monotonic() - start > timeout:
            return None
        time.sleep(interval)


def pod_resolv_conf(nameserver: str, namespace: str = "default",
                    domain: str = "cluster.local") -> str:
    """The /etc/resolv.conf kubelet writes into a pod of ``namespace`` (clusterDNS, the
    search path, ndots:5)."""
    return (f"nameserver {nameserver}\n"
            f"search {namespace}.svc.{domain} svc.{domain} {domain}\n"
            "options ndots:5 timeout:2 attempts:2\n")


def run_with_resolv_conf(ns: NetNS, resolv_conf: str, argv: list[str],
                         timeout: float = 15.0):
    """Run ``argv`` in ``ns`` seeing ``resolv_conf`` as /etc/resolv.conf, as in a pod: in a
    private mount namespace with the file bind-mounted (the host's own file is untouched)."""
    import os
    import tempfile

    with tempfile.NamedTemporaryFile("w", prefix="edgeproxy-resolv-", suffix=".conf",
                                     delete=False) as handle:
        handle.write(resolv_conf)
    try:
        os.chmod(handle.name, 0o644)
        script = 'mount --bind "$0" /etc/resolv.conf && exec "$@"'
        return ns.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script,
                       handle.name, *argv], check=False, timeout=timeout)
    finally:
        os.unlink(handle.name)
