"""UDP forwarding on loopback: whole maximum-size datagrams, per-client sessions, idle timeout,
session bound, replies from the listen address."""

from __future__ import annotations

import os
import time

import gevent
import pytest
from gevent import socket as gsocket

from edgeproxy.model import Endpoint, Protocol
from tests.forwarding.conftest import key, service

UDP = Protocol.UDP


class UdpEcho:
    """Echoes each datagram whole, prefixed by a tag (read with a 64 KiB buffer)."""

    def __init__(self, host: str = "127.0.0.1", tag: bytes = b"") -> None:
        family = gsocket.AF_INET6 if ":" in host else gsocket.AF_INET
        self.sock = gsocket.socket(family, gsocket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.endpoint = Endpoint(host, self.sock.getsockname()[1])
        self.tag = tag
        self.peers: set = set()
        self.task = gevent.spawn(self._run)

    def _run(self):
        while True:
            data, addr = self.sock.recvfrom(65536)
            self.peers.add(addr)
            self.sock.sendto(self.tag + data if self.tag else data, addr)

    def stop(self):
        self.task.kill()
        self.sock.close()


@pytest.fixture
def echoes():
    made = []

    def make(*a, **kw):
        e = UdpEcho(*a, **kw)
        made.append(e)
        return e

    yield make
    for e in made:
        e.stop()


def client(host: str = "127.0.0.1"):
    family = gsocket.AF_INET6 if ":" in host else gsocket.AF_INET
    s = gsocket.socket(family, gsocket.SOCK_DGRAM)
    s.setsockopt(gsocket.SOL_SOCKET, gsocket.SO_RCVBUF, 1 << 20)
    s.settimeout(3)
    return s


@pytest.mark.parametrize("host,size,vip", [
    ("127.0.0.1", 65507, "198.19.0.53"),   # IPv4 maximum UDP payload
    ("::1", 65527, "fd00:198:19::53"),     # IPv6 maximum UDP payload (no jumbogram)
])
def test_maximum_size_datagrams_pass_whole(server, echoes, host, size, vip):
    echo = echoes(host)
    srv = server()
    port = srv.reconcile({key("dns", UDP): service("dns", [echo.endpoint], UDP,
                                                   vips=(vip,))})[key("dns", UDP)]
    c = client(host)
    payload = os.urandom(size)
    c.sendto(payload, (host, port))
    data, src = c.recvfrom(70000)
    assert data == payload
    assert src[:2] == (host, port)  # replies come from the address the client sent to
    c.close()


def test_sessions_per_client_address_and_idle_timeout(server, echoes):
    echo = echoes()
    srv = server(udp_timeout=0.5)
    k = key("dns", UDP)
    port = srv.reconcile({k: service("dns", [echo.endpoint], UDP)})[k]
    clients = [client() for _ in range(50)]
    for round_ in range(3):
        for i, c in enumerate(clients):
            c.sendto(b"%d-%d" % (i, round_), ("127.0.0.1", port))
        for i, c in enumerate(clients):
            assert c.recv(100) == b"%d-%d" % (i, round_)
    st = srv.stats()[k]
    assert st.udp_sessions == 50 and st.udp_sessions_total == 50
    assert len(echo.peers) == 50  # one upstream socket per client session
    gevent.sleep(1.8)
    assert srv.stats()[k].udp_sessions == 0
    clients[0].sendto(b"again", ("127.0.0.1", port))
    assert clients[0].recv(100) == b"again"
    assert srv.stats()[k].udp_sessions_total == 51
    for c in clients:
        c.close()


def test_session_affinity_and_round_robin_per_session(server, echoes):
    a, b = echoes(tag=b"a:"), echoes(tag=b"b:")
    srv = server()
    k = key("dns", UDP)
    port = srv.reconcile({k: service("dns", [a.endpoint, b.endpoint], UDP)})[k]
    c1, c2 = client(), client()
    got = set()
    for c in (c1, c2):
        c.sendto(b"x", ("127.0.0.1", port))
        got.add(c.recv(100)[:2])
    assert got == {b"a:", b"b:"}  # two sessions, round robin
    first = None
    for _ in range(5):  # a session sticks to its endpoint
        c1.sendto(b"y", ("127.0.0.1", port))
        tag = c1.recv(100)[:2]
        first = first or tag
        assert tag == first


def peer(c) -> tuple:
    """The session key the proxy sees for a loopback client socket."""
    return ("127.0.0.1", c.getsockname()[1])


def test_session_bound_evicts_the_idlest_session(server, echoes):
    echo = echoes()
    srv = server(max_udp_sessions_per_service=3)
    k = key("dns", UDP)
    port = srv.reconcile({k: service("dns", [echo.endpoint], UDP)})[k]
    cs = [client() for _ in range(5)]
    addr = ("127.0.0.1", port)

    def ask(c, data=b"ok"):
        c.sendto(data, addr)
        assert c.recv(10) == data

    for c in cs[:3]:
        ask(c)
    ask(cs[0])  # c0 active again: c1 is now the idlest
    ask(cs[3])  # a new client at the bound evicts c1, it is not dropped
    svc = srv._services[k]
    assert set(svc.sessions) == {peer(c) for c in (cs[0], cs[2], cs[3])}
    ask(cs[2])
    ask(cs[4])  # evicts c0 (c2 and c3 were active after it)
    assert set(svc.sessions) == {peer(c) for c in (cs[2], cs[3], cs[4])}
    ask(cs[1])  # an evicted client simply gets a new session
    st = srv.stats()[k]
    assert st.udp_sessions == 3 and st.udp_evicted_total == 3
    assert st.udp_dropped_total == 0 and st.udp_sessions_total == 6
    for c in cs:
        c.close()


def test_sessions_are_kept_in_activity_order_and_swept_idlest_first(server, echoes):
    echo = echoes()
    srv = server(udp_timeout=0.6)
    k = key("dns", UDP)
    port = srv.reconcile({k: service("dns", [echo.endpoint], UDP)})[k]
    cs = [client() for _ in range(4)]
    for c in cs:
        c.sendto(b"a", ("127.0.0.1", port))
        assert c.recv(10) == b"a"
    svc = srv._services[k]
    assert list(svc.sessions) == [peer(c) for c in cs]
    gevent.sleep(0.4)
    for c in (cs[1], cs[3]):
        c.sendto(b"b", ("127.0.0.1", port))
        assert c.recv(10) == b"b"
    # Least recently active first: the sweep looks at the front only.
    assert list(svc.sessions) == [peer(c) for c in (cs[0], cs[2], cs[1], cs[3])]
    gevent.sleep(0.3)
    svc.sweep(time.monotonic())  # (the housekeeper may have swept already: same result)
    assert list(svc.sessions) == [peer(cs[1]), peer(cs[3])]
    for c in cs:
        c.close()


def test_losing_the_last_ipv6_vip_closes_the_ipv6_listener(server, echoes):
    echo4, echo6 = echoes(), echoes("::1")
    srv = server()
    k = key("dns", UDP)
    both = service("dns", [echo4.endpoint], UDP, vips=("198.19.0.53", "fd00:198:19::53"))
    port = srv.reconcile({k: both})[k]
    c6 = client("::1")
    c6.sendto(b"6", ("::1", port))
    assert c6.recv(10) == b"6"
    assert srv.stats()[k].udp_sessions == 1
    srv.reconcile({k: service("dns", [echo4.endpoint], UDP, vips=("198.19.0.53",))})
    # The IPv6 listener and the session answering through it are gone.
    assert srv.stats()[k].udp_sessions == 0
    assert [s.family for s, _ in srv._services[k].listeners] == [gsocket.AF_INET]
    c6.settimeout(0.3)
    c6.sendto(b"6", ("::1", port))
    with pytest.raises(OSError):  # ICMP port unreachable or no answer
        c6.recv(10)
    c4 = client()
    c4.sendto(b"4", ("127.0.0.1", port))
    assert c4.recv(10) == b"4"
    c4.close()
    c6.close()


def test_endpoint_update_keeps_sessions_and_removal_ends_them(server, echoes):
    a, b = echoes(tag=b"a:"), echoes(tag=b"b:")
    srv = server()
    k = key("dns", UDP)
    port = srv.reconcile({k: service("dns", [a.endpoint], UDP)})[k]
    c = client()
    c.sendto(b"1", ("127.0.0.1", port))
    assert c.recv(10) == b"a:1"
    srv.reconcile({k: service("dns", [b.endpoint], UDP)})
    c.sendto(b"2", ("127.0.0.1", port))
    assert c.recv(10) == b"a:2"  # existing session unchanged
    new = client()
    new.sendto(b"3", ("127.0.0.1", port))
    assert new.recv(10) == b"b:3"
    srv.reconcile({})
    assert k not in srv.stats()
