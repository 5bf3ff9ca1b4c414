"""Helpers for forwarding tests: in-process gevent backends and a loopback ProxyServer."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from gevent import socket as gsocket
from gevent.server import StreamServer

from edgeproxy.forwarding.ports import PortRange
from edgeproxy.forwarding.server import ProxyServer
from edgeproxy.model import (
    Endpoint,
    ListenAddresses,
    Protocol,
    ServicePort,
    ServicePortKey,
)

LOOPBACK = ListenAddresses(ipv4="127.0.0.1", ipv6="::1", interface="lo")


def key(name: str = "web", protocol: Protocol = Protocol.TCP) -> ServicePortKey:
    return ServicePortKey("default", name, "", protocol)


def service(name: str, endpoints, protocol: Protocol = Protocol.TCP, vips=("198.19.0.10",),
            **kw) -> ServicePort:
    return ServicePort(key(name, protocol), 80, tuple(vips),
                       endpoints=tuple(sorted(endpoints)), **kw)


def make_server(tmp_path: Path, listen: ListenAddresses = LOOPBACK, **kw) -> ProxyServer:
    kw.setdefault("manage_interface", False)
    kw.setdefault("port_range", PortRange())
    srv = ProxyServer(listen, state_dir=tmp_path / "state", **kw)
    srv.start()
    return srv


class Backend:
    """A TCP backend answering with a fixed tag per connection, or a custom handler."""

    def __init__(self, handler=None, host: str = "127.0.0.1", tag: bytes = b"") -> None:
        self.tag = tag
        self.handler = handler or self.tag_echo
        self.server = StreamServer((host, 0), self.handler)
        self.server.start()
        self.endpoint = Endpoint(host, self.server.server_port)

    def tag_echo(self, sock, addr):
        # Prefix every echoed chunk with the backend's tag so tests see who answered.
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                sock.sendall(self.tag + data)
        except OSError:
            pass  # reset by the proxy: expected in failure tests
        sock.close()

    def stop(self):
        self.server.stop(timeout=0)


@pytest.fixture
def server(tmp_path):
    """server(**kw) -> a started ProxyServer on loopback with its own state dir; all are
    stopped after the test."""
    made = []

    def make(**kw):
        srv = make_server(tmp_path / str(len(made)), **kw)
        made.append(srv)
        return srv

    yield make
    for srv in made:
        srv.stop(0)


@pytest.fixture
def backends():
    made = []

    def make(*args, **kw):
        b = Backend(*args, **kw)
        made.append(b)
        return b

    yield make
    for b in made:
        b.stop()


def dead_endpoint(host: str = "127.0.0.1") -> Endpoint:
    """An address nobody listens on (connection refused)."""
    s = gsocket.socket()
    s.bind((host, 0))
    port = s.getsockname()[1]
    s.close()
    return Endpoint(host, port)


def connect(port: int, host: str = "127.0.0.1", timeout: float = 5.0):
    family = gsocket.AF_INET6 if ":" in host else gsocket.AF_INET
    s = gsocket.socket(family, gsocket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect((host, port))
    return s


def request(port: int, payload: bytes = b"ping", host: str = "127.0.0.1") -> bytes:
    with connect(port, host) as s:
        s.sendall(payload)
        s.shutdown(gsocket.SHUT_WR)
        return recv_all(s)


def recv_all(s) -> bytes:
    chunks = []
    while True:
        data = s.recv(65536)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()

