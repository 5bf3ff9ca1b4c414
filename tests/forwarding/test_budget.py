"""The process-wide descriptor budget: UDP sessions and TCP connections of every service
share it; the idlest UDP session anywhere is evicted first; TCP waits in the backlog."""

from __future__ import annotations

import gevent
from gevent import socket as gsocket

from edgeproxy.forwarding.budget import MIN_HEADROOM, SocketBudget, pipes_for
from edgeproxy.model import Protocol
from tests.forwarding.conftest import key, service
from tests.forwarding.test_udp import client, echoes  # noqa: F401 - a fixture

UDP = Protocol.UDP


def test_budget_from_the_descriptor_limit_keeps_headroom():
    assert SocketBudget.from_rlimit(1024).total == 1024 - MIN_HEADROOM - 2 * pipes_for(1024)
    big = SocketBudget.from_rlimit(1 << 20)
    assert big.total == (1 << 20) - (1 << 17) - 2 * 512  # an eighth, and 512 pipes at most
    assert SocketBudget.from_rlimit(100).total == 0  # too low a limit: no forwarding fds


def test_the_idlest_udp_session_of_any_service_is_evicted_first(server, echoes):
    echo = echoes()
    srv = server()
    srv.budget.total = 3
    a, b = key("a", UDP), key("b", UDP)
    ports = srv.reconcile({a: service("a", [echo.endpoint], UDP),
                           b: service("b", [echo.endpoint], UDP)})
    clients = [client() for _ in range(4)]
    for i, (c, k) in enumerate(zip(clients, (a, b, b, a))):
        c.sendto(b"%d" % i, ("127.0.0.1", ports[k]))
        assert c.recv(100) == b"%d" % i
        gevent.sleep(0.01)
    stats = srv.stats()
    # 4 clients, room for 3: the first session (service a, the idlest) made room.
    assert stats[a].udp_sessions == 1 and stats[b].udp_sessions == 2
    assert stats[a].udp_evicted_total == 1 and srv.budget.evicted_total == 1
    assert srv.budget.used == 3
    clients[0].sendto(b"back", ("127.0.0.1", ports[a]))  # a new session again, evicting b's
    assert clients[0].recv(100) == b"back"
    assert srv.stats()[b].udp_evicted_total == 1
    for c in clients:
        c.close()


def test_tcp_waits_for_descriptors_then_is_served(server, backends):
    backend = backends()
    srv = server()
    srv.budget.total = 2  # one connection
    k = key("web")
    port = srv.reconcile({k: service("web", [backend.endpoint])})[k]
    first = gsocket.create_connection(("127.0.0.1", port), timeout=3)
    first.sendall(b"one")
    assert first.recv(100) == b"one"
    second = gsocket.create_connection(("127.0.0.1", port), timeout=3)  # in the backlog
    second.sendall(b"two")
    second.settimeout(0.3)
    try:
        got = second.recv(100)
    except gsocket.timeout:
        got = b""
    assert got == b"" and srv.budget.exhausted_total["tcp"] >= 1
    first.close()  # descriptors come back: the waiting connection is accepted
    second.settimeout(3)
    assert second.recv(100) == b"two"
    second.close()
    gevent.sleep(0.1)
    assert srv.budget.used == 0


def test_a_udp_flood_cannot_starve_tcp_of_its_room(server, echoes, backends):
    echo, backend = echoes(), backends()
    srv = server()
    srv.budget.total = 40
    u, t = key("dns", UDP), key("web")
    ports = srv.reconcile({u: service("dns", [echo.endpoint], UDP),
                           t: service("web", [backend.endpoint])})
    flood = [client() for _ in range(100)]
    for c in flood:
        c.sendto(b"q", ("127.0.0.1", ports[u]))
    gevent.sleep(0.2)
    assert srv.budget.used <= 40
    conn = gsocket.create_connection(("127.0.0.1", ports[t]), timeout=3)
    conn.sendall(b"still here")
    assert conn.recv(100) == b"still here"  # a UDP session was evicted to make room
    conn.close()
    for c in flood:
        c.close()


def test_a_udp_service_that_cannot_listen_leaves_nothing_on_the_budget(server, echoes,
                                                                        monkeypatch):
    """A failed add (no port could be bound) must not leave its service among those the
    budget scans for the idlest session on every eviction."""
    echo = echoes()
    srv = server()
    k = key("a", UDP)

    def no_port(*_args, **_kwargs):
        raise OSError(98, "Address already in use")

    monkeypatch.setattr(srv, "_allocate_bound", no_port)
    for _ in range(3):
        assert k not in srv.reconcile({k: service("a", [echo.endpoint], UDP)})
    assert srv.budget._udp == []
    monkeypatch.undo()
    ports = srv.reconcile({k: service("a", [echo.endpoint], UDP)})
    assert len(srv.budget._udp) == 1
    srv.reconcile({})
    assert ports[k] and srv.budget._udp == []
