"""ProxyServer in a private network namespace: the real edgeproxy0 interface, DNAT rules added
by hand, a node with no default route, dig against dnsmasq, and a black-holed endpoint."""

from __future__ import annotations

import sys
import time

import gevent
import pytest
from gevent import socket as gsocket
from gevent import subprocess as gsub

from edgeproxy.forwarding.ports import RESERVED_PORTS_PATH
from edgeproxy.forwarding.server import ProxyServer
from edgeproxy.model import Endpoint, ListenAddresses, Protocol
from tests.forwarding.conftest import Backend, connect, key, service

pytestmark = pytest.mark.netns

LISTEN = ListenAddresses()
VIP = "198.19.0.10"


def sh(*argv: str) -> str:
    result = gsub.run(list(argv), capture_output=True, text=True, timeout=10)
    assert result.returncode == 0, f"{argv}: {result.stderr}"
    return result.stdout


def dummy(name: str, *addrs: str) -> None:
    """An interface with nothing behind it (dummy, or an empty bridge where the kernel lacks
    the dummy driver)."""
    if gsub.run(["ip", "link", "add", name, "type", "dummy"], capture_output=True).returncode:
        sh("ip", "link", "add", name, "type", "bridge")
    sh("ip", "link", "set", name, "up")
    for addr in addrs:
        sh("ip", "addr", "add", addr, "dev", name)


def dnat(proto: str, vip: str, port: int, to_port: int) -> None:
    sh("iptables", "-t", "nat", "-A", "OUTPUT", "-d", vip, "-p", proto, "--dport", str(port),
       "-j", "DNAT", "--to-destination", f"{LISTEN.ipv4}:{to_port}")


def test_host_path_on_node_without_default_route(netns, tmp_path):
    with netns.entered():
        dummy("backend0", "198.18.1.11/32")
        backend = Backend(host="198.18.1.11", tag=b"web:")
        srv = ProxyServer(LISTEN, state_dir=tmp_path)
        srv.start()
        try:
            assert "169.254.96.17/32" in sh("ip", "-4", "addr", "show", "dev", "edgeproxy0")
            assert "61000-64999" in RESERVED_PORTS_PATH.read_text()
            port = srv.reconcile({key(): service("web", [backend.endpoint], vips=(VIP,))})[key()]
            assert 61000 <= port <= 64999
            dnat("tcp", VIP, 80, port)
            with pytest.raises(OSError) as info:
                connect(80, VIP, timeout=1)
            assert "unreachable" in str(info.value).lower()  # routed before nat OUTPUT

            assert srv.sync_routes([VIP]) == {VIP}
            assert "edgeproxy0" in sh("ip", "route", "get", VIP)
            with connect(80, VIP) as s:
                assert s.getpeername() == (VIP, 80)  # the reply comes from the VIP
                s.sendall(b"hello")
                assert s.recv(100) == b"web:hello"
            # The listener is bound to the listen address only: not a second way in.
            with pytest.raises(ConnectionRefusedError):
                connect(port, "198.18.1.11", timeout=1)

            assert srv.sync_routes([]) == set()
            assert "edgeproxy0" not in sh("ip", "route", "show")
        finally:
            srv.stop(0)
            backend.stop()
        assert gsub.run(["ip", "link", "show", "edgeproxy0"], capture_output=True).returncode


def test_existing_route_is_not_overridden(netns, tmp_path):
    with netns.entered():
        dummy("uplink0", "198.18.0.2/24")
        sh("ip", "route", "add", "default", "dev", "uplink0")
        srv = ProxyServer(LISTEN, state_dir=tmp_path)
        srv.start()
        try:
            assert srv.sync_routes([VIP]) == set()
            assert "uplink0" in sh("ip", "route", "get", VIP)
            srv.start()  # idempotent
        finally:
            srv.stop(0)


def test_many_routes_in_one_batch_adopted_after_a_kill_and_rechecked(netns, tmp_path):
    from edgeproxy.forwarding.listen import RouteKeeper, ensure_interface

    vips = [f"198.19.{i // 250}.{i % 250 + 1}" for i in range(2000)]
    with netns.entered():
        ensure_interface(LISTEN)
        first = RouteKeeper(LISTEN)
        assert first.sync(vips) == set(vips)  # offline node: every VIP needs a host route
        assert len(sh("ip", "-o", "route", "show", "dev", "edgeproxy0").splitlines()) == 2000
        # The process is killed: a new keeper adopts the routes on its interface, keeps the
        # wanted ones and removes the rest.
        second = RouteKeeper(LISTEN)
        assert second.sync(vips[:10]) == set(vips[:10])
        assert len(sh("ip", "-o", "route", "show", "dev", "edgeproxy0").splitlines()) == 10
        # A default route appears, then someone deletes one of our routes: at the next
        # recheck that VIP is looked up again, found routable and left alone.
        dummy("uplink0", "198.18.0.2/24")
        sh("ip", "route", "add", "default", "dev", "uplink0")
        sh("ip", "route", "del", f"{vips[0]}/32", "dev", "edgeproxy0")
        second._last_recheck = float("-inf")
        assert second.sync(vips[:10]) == set(vips[1:10])
        assert "uplink0" in sh("ip", "route", "get", vips[0])
        second.clear()
        assert sh("ip", "-o", "route", "show", "dev", "edgeproxy0") == ""


def test_port_allocation_survives_restart(netns, tmp_path):
    with netns.entered():
        keys = [key(f"svc{i}") for i in range(5)]
        state = {k: service(k.name, [Endpoint("198.18.1.11", 80)]) for k in keys}
        first = ProxyServer(LISTEN, state_dir=tmp_path)
        first.start()
        ports = first.reconcile(state)
        first.stop(0)
        second = ProxyServer(LISTEN, state_dir=tmp_path)
        second.start()
        try:
            assert second.reconcile(dict(reversed(list(state.items())))) == ports
        finally:
            second.stop(0)


def test_dig_through_udp_and_tcp_proxy_to_dnsmasq(netns, tmp_path):
    with netns.entered():
        dummy("backend0", "198.18.1.21/32")
        dns = gsub.Popen(["dnsmasq", "--no-daemon", "--port", "5353", "--bind-interfaces",
                          "--listen-address=198.18.1.21", "--no-resolv", "--no-hosts",
                          "--address=/edge.test/198.18.9.9", "--pid-file="],
                         stdout=gsub.DEVNULL, stderr=gsub.DEVNULL)
        srv = ProxyServer(LISTEN, state_dir=tmp_path)
        srv.start()
        try:
            ep = [Endpoint("198.18.1.21", 5353)]
            udp, tcp = key("dns", Protocol.UDP), key("dns", Protocol.TCP)
            ports = srv.reconcile({udp: service("dns", ep, Protocol.UDP, vips=("198.19.0.53",)),
                                   tcp: service("dns", ep, Protocol.TCP, vips=("198.19.0.53",))})
            srv.sync_routes(["198.19.0.53"])
            dnat("udp", "198.19.0.53", 53, ports[udp])
            dnat("tcp", "198.19.0.53", 53, ports[tcp])
            gevent.sleep(0.3)  # dnsmasq start-up
            for flags in ([], ["+tcp"]):
                out = sh("dig", "@198.19.0.53", "edge.test", "+short", "+time=2", "+tries=2",
                         *flags)
                assert out.strip() == "198.18.9.9"
            stats = srv.stats()
            assert stats[udp].udp_datagrams_in >= 1 and stats[udp].udp_sessions == 1
            assert stats[tcp].connections_total == 1
        finally:
            srv.stop(0)
            dns.kill()
            dns.wait()


def test_black_holed_endpoint_does_not_block_other_clients(netns, tmp_path):
    with netns.entered():
        dummy("backend0", "198.18.1.11/32")
        # Nobody answers ARP behind hole0: a dial to 198.18.200.1 hangs (no RST, no ICMP).
        sh("ip", "link", "add", "hole0", "type", "veth", "peer", "name", "hole1")
        sh("ip", "link", "set", "hole0", "up")
        sh("ip", "link", "set", "hole1", "up")
        sh("ip", "route", "add", "198.18.200.0/24", "dev", "hole0")
        live = Backend(host="198.18.1.11", tag=b"live:")
        srv = ProxyServer(LISTEN, state_dir=tmp_path, dial_timeouts=(1.0, 0.5, 0.5))
        srv.start()
        try:
            sp = service("web", [Endpoint("198.18.200.1", 80), live.endpoint], vips=())
            port = srv.reconcile({key(): sp})[key()]
            if srv._services[key()].balancer.endpoints[0] == live.endpoint:
                with connect(port, LISTEN.ipv4) as s:  # advance round robin to the hole
                    s.sendall(b"-")
                    s.recv(100)
            timings = {}

            def client(name):
                t0 = time.monotonic()
                with connect(port, LISTEN.ipv4) as s:
                    s.sendall(name.encode())
                    reply = s.recv(100)
                    timings[name] = (time.monotonic() - t0, reply)

            first = gevent.spawn(client, "a")
            gevent.sleep(0.05)  # a is accepted and dialing when b arrives
            second = gevent.spawn(client, "b")
            gevent.joinall([first, second], timeout=8, raise_error=True)
            assert sorted(v[1] for v in timings.values()) == [b"live:a", b"live:b"]
            fast, slow = sorted(v[0] for v in timings.values())
            assert 0.9 <= slow < 1.4  # one client waited for the black hole, then failed over
            assert fast < 0.5    # the other was served meanwhile
            # a: hole (1 s), then live: its failover avoids the endpoint it already tried,
            # although b moved the round-robin position back to the hole meanwhile.
            assert srv.stats()[key()].dial_failures_total == 1
        finally:
            srv.stop(0)
            live.stop()


POD_CLIENT = """
import socket, sys
proto, vip, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
s = socket.socket(socket.AF_INET, kind)
s.settimeout(3)
s.connect((vip, port))
s.send(b"from-pod")
data, src = s.recvfrom(100) if proto == "udp" else (s.recv(100), s.getpeername())
print(data.decode(), src[0], src[1])
"""


def test_pod_path_through_prerouting_tcp_and_udp(netns_factory, tmp_path):
    from tests.support.netns import veth_pair

    node, pod = netns_factory("epnode"), netns_factory("eppod")
    veth_pair(pod, node, ["198.18.0.2/24"], ["198.18.0.1/24"])
    pod.run(["ip", "route", "add", "default", "via", "198.18.0.1"])
    with node.entered():
        dummy("backend0", "198.18.1.11/32")
        tcp_backend = Backend(host="198.18.1.11", tag=b"tcp:")
        udp_sock = gsocket.socket(gsocket.AF_INET, gsocket.SOCK_DGRAM)
        udp_sock.bind(("198.18.1.11", 0))

        def udp_echo():
            while True:
                data, addr = udp_sock.recvfrom(65536)
                udp_sock.sendto(b"udp:" + data, addr)

        echo = gevent.spawn(udp_echo)
        srv = ProxyServer(LISTEN, state_dir=tmp_path)
        srv.start()
        try:
            t, u = key("echo", Protocol.TCP), key("echo", Protocol.UDP)
            ports = srv.reconcile({
                t: service("echo", [tcp_backend.endpoint], Protocol.TCP, vips=(VIP,)),
                u: service("echo", [Endpoint("198.18.1.11", udp_sock.getsockname()[1])],
                           Protocol.UDP, vips=(VIP,)),
            })
            for proto, k in (("tcp", t), ("udp", u)):
                sh("iptables", "-t", "nat", "-A", "PREROUTING", "-d", VIP, "-p", proto,
                   "--dport", "7000", "-j", "DNAT", "--to-destination",
                   f"{LISTEN.ipv4}:{ports[k]}")
            for proto in ("tcp", "udp"):
                out = gsub.run(pod.command([sys.executable, "-c", POD_CLIENT, proto, VIP,
                                            "7000"]),
                               capture_output=True, text=True, timeout=10)
                assert out.returncode == 0, out.stderr
                # The pod sees the answer, and it comes from the VIP it asked.
                assert out.stdout.split() == [f"{proto}:from-pod", VIP, "7000"]
        finally:
            srv.stop(0)
            echo.kill()
            udp_sock.close()
            tcp_backend.stop()
