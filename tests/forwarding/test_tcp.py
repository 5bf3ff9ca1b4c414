"""TCP forwarding through a real ProxyServer on loopback: integrity, half-close, failover,
reset, limits, idle timeout, drain, in-place endpoint updates, header hashing."""

from __future__ import annotations

import errno
import os
import time

import gevent
import pytest
from gevent import socket as gsocket

from edgeproxy.forwarding.tcp import peek_http_header
from edgeproxy.model import LoadBalancerKind, LoadBalancerPolicy
from tests.forwarding.conftest import (
    connect,
    dead_endpoint,
    key,
    recv_all,
    request,
    service,
    sha,
)


def test_payload_integrity_both_ways_with_half_close(server, backends):
    upload = os.urandom(6 << 20)
    download = os.urandom(5 << 20)
    seen = {}

    def handler(sock, addr):
        # Read the whole upload (client half-closes), then answer: the response direction must
        # still work after the request direction ended.
        seen["upload"] = sha(recv_all(sock))
        sock.sendall(download)
        sock.close()

    b = backends(handler)
    srv = server()
    port = srv.reconcile({key(): service("web", [b.endpoint])})[key()]
    got = request(port, upload)
    assert seen["upload"] == sha(upload)
    assert sha(got) == sha(download)
    st = srv.stats()[key()]
    assert st.bytes_in == len(upload) and st.bytes_out == len(download)


@pytest.mark.parametrize("use_splice", [True, False])
def test_half_close_from_backend_side(server, backends, use_splice):
    def handler(sock, addr):
        sock.sendall(b"banner")
        sock.shutdown(gsocket.SHUT_WR)  # backend is done talking, still listening
        data = recv_all(sock)
        sock.close()
        handler.got = data

    b = backends(handler)
    srv = server(use_splice=use_splice)
    port = srv.reconcile({key(): service("web", [b.endpoint])})[key()]
    with connect(port) as s:
        assert recv_all(s) == b"banner"  # EOF seen by the client...
        s.sendall(b"late request")       # ...yet its own direction is still open
        s.shutdown(gsocket.SHUT_WR)
        gevent.sleep(0.2)
    assert handler.got == b"late request"


def test_dial_failover_to_live_endpoint(server, backends):
    b = backends(tag=b"live:")
    dead = dead_endpoint()
    srv = server()
    port = srv.reconcile({key(): service("web", [dead, b.endpoint])})[key()]
    for _ in range(6):
        assert request(port, b"x") == b"live:x"
    st = srv.stats()[key()]
    assert st.dial_failures_total >= 2  # round robin hits the dead one every other time
    assert st.connections_reset_total == 0


def test_all_endpoints_dead_resets_client(server):
    srv = server()
    port = srv.reconcile({key(): service("web", [dead_endpoint(), dead_endpoint()])})[key()]
    start = time.monotonic()
    with connect(port) as s:
        with pytest.raises(ConnectionResetError):
            s.sendall(b"x")
            s.recv(10)
    assert time.monotonic() - start < 2.0
    st = srv.stats()[key()]
    assert st.connections_reset_total == 1
    assert st.dial_failures_total == 4  # kube-proxy's four attempts


def test_no_endpoints_resets_client(server):
    srv = server()
    port = srv.reconcile({key(): service("web", [])})[key()]
    with pytest.raises(ConnectionResetError):
        # The reset is immediate: it may already hit connect() itself.
        with connect(port) as s:
            s.recv(10)
    assert srv.stats()[key()].connections_reset_total == 1


def test_endpoint_update_keeps_open_connections(server, backends):
    a, b = backends(tag=b"a:"), backends(tag=b"b:")
    srv = server()
    port = srv.reconcile({key(): service("web", [a.endpoint])})[key()]
    with connect(port) as s:
        s.sendall(b"1")
        assert s.recv(10) == b"a:1"
        assert srv.reconcile({key(): service("web", [b.endpoint])})[key()] == port
        s.sendall(b"2")
        assert s.recv(10) == b"a:2"  # the open connection still goes to a
    assert request(port, b"3") == b"b:3"


def test_removed_service_stops_accepting_and_drains(server, backends):
    b = backends(tag=b"b:")
    srv = server(drain_grace=0.6)
    port = srv.reconcile({key(): service("web", [b.endpoint])})[key()]
    s = connect(port)
    s.sendall(b"1")
    assert s.recv(10) == b"b:1"
    assert srv.reconcile({}) == {}
    with pytest.raises(ConnectionRefusedError):
        connect(port)
    s.sendall(b"2")
    assert s.recv(10) == b"b:2"  # draining connection still served
    assert srv.stats()[key()].draining == 1
    gevent.sleep(1.8)  # grace over: housekeeping resets what is left
    with pytest.raises((ConnectionResetError, BrokenPipeError)):
        s.sendall(b"3")
        if not s.recv(10):
            raise ConnectionResetError
    s.close()
    assert key() not in srv.stats()


def test_idle_timeout_closes_quiet_connections(server, backends):
    b = backends(tag=b"b:")
    srv = server(tcp_idle_timeout=0.5)
    port = srv.reconcile({key(): service("web", [b.endpoint])})[key()]
    busy, quiet = connect(port), connect(port)
    deadline = time.monotonic() + 2.2
    while time.monotonic() < deadline:
        busy.sendall(b"k")
        assert busy.recv(10) == b"b:k"
        gevent.sleep(0.1)
    with pytest.raises(ConnectionResetError):
        if not quiet.recv(10):
            raise ConnectionResetError
    assert srv.stats()[key()].idle_closed_total == 1
    busy.close()


def test_connection_limit_applies_back_pressure(server, backends):
    b = backends(tag=b"b:")
    srv = server(max_connections_per_service=2)
    port = srv.reconcile({key(): service("web", [b.endpoint])})[key()]
    first, second = connect(port), connect(port)
    for s in (first, second):
        s.sendall(b"x")
        assert s.recv(10) == b"b:x"
    third = connect(port)  # completes in the kernel backlog, but is not served yet
    third.sendall(b"y")
    third.settimeout(0.4)
    with pytest.raises(gsocket.timeout):
        third.recv(10)
    first.close()
    third.settimeout(3)
    assert third.recv(10) == b"b:y"
    assert srv.stats()[key()].accept_paused_total >= 1
    second.close()
    third.close()


def test_http_header_hash_routes_by_header(server, backends):
    a, b, c = backends(tag=b"a:"), backends(tag=b"b:"), backends(tag=b"c:")
    policy = LoadBalancerPolicy(LoadBalancerKind.CONSISTENT_HASH_HTTP_HEADER,
                                http_header_name="X-User")
    srv = server()
    port = srv.reconcile({key(): service("web", [a.endpoint, b.endpoint, c.endpoint],
                                         lb_policy=policy)})[key()]

    def who(user: str) -> bytes:
        req = f"GET / HTTP/1.1\r\nHost: x\r\nX-User: {user}\r\n\r\n".encode()
        return request(port, req)[:2]

    owners = {u: who(u) for u in ("alice", "bob", "carol", "dave", "erin", "frank")}
    assert len(set(owners.values())) >= 2
    for u, owner in owners.items():
        assert who(u) == owner and who(u) == owner


def test_header_peek_is_bounded_and_does_not_block_others(server, backends):
    a = backends(tag=b"a:")
    policy = LoadBalancerPolicy(LoadBalancerKind.CONSISTENT_HASH_HTTP_HEADER,
                                http_header_name="X-User")
    srv = server()
    port = srv.reconcile({key(): service("web", [a.endpoint], lb_policy=policy)})[key()]
    silent = connect(port)  # sends nothing: its peek waits up to 1 s
    t0 = time.monotonic()
    assert request(port, b"GET / HTTP/1.1\r\nX-User: z\r\n\r\n").startswith(b"a:GET")
    assert time.monotonic() - t0 < 0.5
    silent.sendall(b"late")  # after the peek timeout it is forwarded (round robin fallback)
    silent.settimeout(3)
    assert silent.recv(10) == b"a:late"
    silent.close()


def test_peek_http_header_parsing():
    left, right = gsocket.socketpair()
    right.sendall(b"GET / HTTP/1.1\r\nHost: h\r\nx-user:  Zed \r\n\r\nbody")
    assert peek_http_header(left, "X-User") == b"Zed"
    assert left.recv(100).startswith(b"GET /")  # peeked, not consumed
    right.sendall(b"\x16\x03\x01binary")
    assert peek_http_header(left, "X-User", timeout=0.2) is None


def test_ipv6_listener_and_endpoint(server, backends):
    b = backends(host="::1", tag=b"v6:")
    srv = server()
    sp = service("web", [b.endpoint], vips=("fd00:198:19::10",))
    port = srv.reconcile({key(): sp})[key()]
    assert request(port, b"hi", host="::1") == b"v6:hi"
    with pytest.raises(OSError) as info:
        connect(port, "127.0.0.1", timeout=1)  # v6-only service: no IPv4 listener
    assert info.value.errno == errno.ECONNREFUSED


def refused(port: int, host: str) -> bool:
    try:
        connect(port, host, timeout=1).close()
    except OSError as exc:
        if exc.errno == errno.ECONNREFUSED:
            return True
        raise
    return False


def test_listener_follows_the_families_of_the_vips(server, backends):
    b = backends(tag=b"b:")
    srv = server()
    both = service("web", [b.endpoint], vips=("198.19.0.10", "fd00:198:19::10"))
    port = srv.reconcile({key(): both})[key()]
    assert request(port, b"4", host="127.0.0.1") == b"b:4"
    assert request(port, b"6", host="::1") == b"b:6"
    open_v6 = connect(port, "::1")
    open_v6.sendall(b"x")
    assert open_v6.recv(10) == b"b:x"
    # The last IPv6 VIP goes: the IPv6 listener closes, the open IPv6 connection keeps going.
    srv.reconcile({key(): service("web", [b.endpoint], vips=("198.19.0.10",))})
    assert refused(port, "::1")
    assert request(port, b"4", host="127.0.0.1") == b"b:4"
    open_v6.sendall(b"y")
    assert open_v6.recv(10) == b"b:y"
    # Symmetric: IPv6 only now, so IPv4 closes and IPv6 comes back on the same proxy port.
    assert srv.reconcile({key(): service("web", [b.endpoint], vips=("fd00:198:19::10",))}
                         )[key()] == port
    assert refused(port, "127.0.0.1")
    assert request(port, b"6", host="::1") == b"b:6"
    assert len(srv._services[key()].listeners) == 1
    open_v6.close()


def test_pipes_are_held_only_while_data_is_in_flight(server, backends):
    b = backends(tag=b"b:")
    srv = server()
    port = srv.reconcile({key(): service("web", [b.endpoint])})[key()]
    conns = [connect(port) for _ in range(20)]
    for s in conns:
        s.sendall(b"x" * 1000)
        assert len(recv_exactly(s, 1002)) == 1002
    svc = srv._services[key()]
    assert all(c.up.pipe is None and c.down.pipe is None for c in svc.connections)
    assert srv.pipes.open_pipes <= 2  # one pipe per direction in flight at a time, reused
    for s in conns:
        s.close()


def test_exhausted_pipe_pool_falls_back_to_copy(server, backends):
    data = os.urandom(3 << 20)

    def handler(sock, addr):
        sock.sendall(recv_all(sock))
        sock.close()

    b = backends(handler)
    srv = server()
    srv.pipes.max_pipes = 0  # nothing can be borrowed: every chunk goes through recv/send
    port = srv.reconcile({key(): service("web", [b.endpoint])})[key()]
    assert sha(request(port, data)) == sha(data)
    assert srv.pipes.open_pipes == 0


def recv_exactly(s, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            break
        buf += chunk
    return buf


def _answer_and_close(sock, addr):
    """An HTTP/1.0 backend: reads the request, answers, closes first."""
    try:
        sock.recv(4096)
        sock.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
    finally:
        sock.close()


@pytest.mark.netns
def test_a_closing_backend_fin_follows_its_answer_so_the_client_closes_second(netns,
                                                                             tmp_path):
    """The backend's FIN reaches the client together with the answer (as through DNAT), so a
    client that closes once it has the answer closes second: TIME_WAIT stays on the proxy's
    accepted socket, not on the client's ephemeral port (where thousands of them made the
    client's connect() search for free ports: 7,000 -> 700 new connections/s)."""
    from tests.forwarding.conftest import Backend, make_server

    with netns.entered():
        backend = Backend(_answer_and_close)
        srv = make_server(tmp_path)
        try:
            port = srv.reconcile({key("web"): service("web", [backend.endpoint])})[key("web")]
            for _ in range(200):
                client = gsocket.create_connection(("127.0.0.1", port), timeout=3)
                client.sendall(b"GET / HTTP/1.0\r\n\r\n")
                data = b""
                while not data.endswith(b"ok"):
                    data += client.recv(4096)
                client.close()  # as wrk does once the answer is complete
            gevent.sleep(0.2)
        finally:
            srv.stop(0)
            backend.stop()
    waiting = netns.run(["ss", "-Htan", "state", "time-wait", "dst", f"127.0.0.1:{port}"]
                        ).stdout.splitlines()
    assert len(waiting) < 20, f"{len(waiting)} of 200 client sockets in TIME_WAIT"


def test_closed_listeners_are_reported_and_reopened_on_the_same_port(server, backends):
    """Both listeners of a dual-stack port closed behind the server's back: health names each
    with its port, one verify reopens both (the port synced once) and says what it repaired."""
    b = backends(tag=b"b:")
    srv = server()
    both = service("web", [b.endpoint], vips=("198.19.0.10", "fd00:198:19::10"))
    port = srv.reconcile({key(): both})[key()]
    for sock, _ in list(srv._services[key()].listeners):
        sock.close()
    assert srv.health_problems() == [f"{key()}: no IPv4 listener on port {port}",
                                     f"{key()}: no IPv6 listener on port {port}"]
    assert srv.verify() == [f"{key()}: IPv4 listener was closed",
                            f"{key()}: IPv6 listener was closed"]
    assert srv.health_problems() == [] and srv.verify() == []
    assert request(port, b"4", host="127.0.0.1") == b"b:4"
    assert request(port, b"6", host="::1") == b"b:6"
