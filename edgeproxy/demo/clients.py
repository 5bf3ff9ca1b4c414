"""Clients made inside a namespace (the demo's HTTP and echo checks), and polling.

The socket is created with the calling thread inside the namespace (`NetNS.entered`) and used
after it has left: a socket stays in the namespace it was made in.
"""

from __future__ import annotations

import socket
import time
from typing import Callable

from edgeproxy.demo.netns import NetNS


def http_get(ns: NetNS, host: str, port: int = 80, path: str = "/",
             headers: dict[str, str] | None = None, timeout: float = 2.0,
             connect_timeout: float | None = None) -> str:
    """GET over a fresh connection made inside `ns`; returns the body or raises OSError.
    ``connect_timeout`` (default: ``timeout``) bounds the handshake alone."""
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
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.") or b" 200 " not in head.split(b"\r\n", 1)[0]:
        raise OSError(f"unexpected HTTP answer from {host}:{port}: {head[:80]!r}")
    return body.decode(errors="replace")


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
