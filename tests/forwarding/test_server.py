"""ProxyServer choosing endpoints on a real node: selection rules, passive ejection, probes,
panic, locality order, affinity and UDP sessions, with real sockets in a private network
namespace (backends on a dummy interface; an endpoint whose SYNs vanish is made with an
iptables DROP in that namespace, one that refuses by closing its port)."""

from __future__ import annotations

import contextlib
import time
from collections import Counter

import gevent
import pytest
from gevent import socket as gsocket
from gevent import subprocess as gsub
from gevent.server import StreamServer

from edgeproxy.forwarding.health import EJECTED, HealthSettings
from edgeproxy.forwarding.server import ProxyServer
from edgeproxy.forwarding.topology import NodeIdentity
from edgeproxy.model import (Endpoint, EndpointInfo, ListenAddresses, LoadBalancerKind,
                             LoadBalancerPolicy, Protocol, ServicePort, TrafficPolicy)
from tests.forwarding.conftest import key
from tests.forwarding.test_netns import dummy, sh

pytestmark = pytest.mark.netns

LISTEN = ListenAddresses()
NODE = NodeIdentity("edge-1", "zone-a")
A, B, C = "198.18.1.11", "198.18.1.12", "198.18.1.13"
PORT = 8080
FAST = HealthSettings(consecutive_failures=3, base_ejection=5.0, max_ejection=10.0,
                      probe_interval=0.2, probe_timeout=0.2)


class Tagged:
    """A TCP backend at ip:PORT answering every connection with its name."""

    def __init__(self, ip: str, port: int = PORT) -> None:
        self.ip, self.port = ip, port
        self.server: StreamServer | None = None
        self.start()

    def start(self) -> None:
        def handle(sock, addr):
            with contextlib.suppress(OSError):
                sock.sendall(self.ip.encode())
            sock.close()

        listener = gsocket.socket()
        listener.setsockopt(gsocket.SOL_SOCKET, gsocket.SO_REUSEADDR, 1)
        listener.bind((self.ip, self.port))
        listener.listen(128)
        self.server = StreamServer(listener, handle)
        self.server.start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(timeout=0)
            self.server = None


def info(ip: str, *, node: str | None = None, zone: str | None = None, ready=True,
         terminating=False, zones=(), nodes=()) -> EndpointInfo:
    return EndpointInfo(Endpoint(ip, PORT), ready=ready, serving=ready or terminating,
                        terminating=terminating, node_name=node, zone=zone,
                        zone_hints=tuple(zones), node_hints=tuple(nodes))


def port_of(*infos: EndpointInfo, protocol=Protocol.TCP, internal="Cluster", affinity=False,
            policy=None, name="web") -> ServicePort:
    return ServicePort(key(name, protocol), 80, ("198.19.0.10",),
                       endpoints=tuple(sorted(i.address for i in infos if i.ready)),
                       endpoint_info=tuple(sorted(infos)), traffic=TrafficPolicy(internal),
                       session_affinity=affinity, lb_policy=policy or LoadBalancerPolicy())


@contextlib.contextmanager
def node(netns, tmp_path, **kw):
    """The test runs inside ``netns`` with backends' addresses on a dummy interface and a
    started ProxyServer (edgeproxy0 and its listen address included)."""
    with netns.entered():
        dummy("backend0", f"{A}/32", f"{B}/32", f"{C}/32")
        kw.setdefault("health", FAST)
        kw.setdefault("node", NODE)
        srv = ProxyServer(LISTEN, state_dir=tmp_path, **kw)
        srv.start()
        try:
            yield srv
        finally:
            srv.stop(0)


def drop_syns(ip: str) -> None:
    """The endpoint's SYNs vanish, like a cloud pod behind a dead uplink (no RST, no ICMP)."""
    sh("iptables", "-A", "INPUT", "-d", ip, "-p", "tcp", "--dport", str(PORT), "-j", "DROP")


def restore(ip: str) -> None:
    sh("iptables", "-D", "INPUT", "-d", ip, "-p", "tcp", "--dport", str(PORT), "-j", "DROP")


def fetch(port: int, source: str | None = None, timeout: float = 5.0) -> tuple[str, float]:
    """(the backend that answered, seconds from connect to the first byte)."""
    t0 = time.monotonic()
    s = gsocket.socket()
    s.settimeout(timeout)
    if source:
        s.bind((source, 0))
    try:
        s.connect((LISTEN.ipv4, port))
        data = s.recv(64)
    finally:
        s.close()
    return data.decode(), time.monotonic() - t0


def wait_for(predicate, timeout: float = 5.0, step: float = 0.02) -> float:
    """Seconds until ``predicate()`` held (fails the test after ``timeout``)."""
    t0 = time.monotonic()
    while not predicate():
        assert time.monotonic() - t0 < timeout, "condition not met in time"
        gevent.sleep(step)
    return time.monotonic() - t0


# -- passive ejection, probes, panic ---------------------------------------------------------


def test_syn_dropping_endpoint_costs_at_most_the_failures_then_is_skipped(netns, tmp_path):
    with node(netns, tmp_path) as srv:
        a, b = Tagged(A), Tagged(B)
        port = srv.reconcile({key(): port_of(info(A), info(B))})[key()]
        drop_syns(B)
        results = [fetch(port) for _ in range(30)]
        assert {who for who, _ in results} == {A}  # nobody failed: each slow one failed over
        slow = [t for _, t in results if t > 0.2]
        assert 1 <= len(slow) <= FAST.consecutive_failures  # the failures that ejected B
        assert all(t < 0.1 for _, t in results[len(slow) + 2:])
        st = srv.stats()[key()]
        assert (st.endpoint_ejections_total, st.endpoints_ejected) == (1, 1)
        assert st.connections_reset_total == 0
        report = srv.endpoint_reports()[key()].endpoints[f"{B}:{PORT}"]
        assert report.state == EJECTED and report.ejected_for > 0
        assert report.last_error == "Connection timed out"
        a.stop(), b.stop()


def test_probe_readmits_an_endpoint_as_soon_as_it_answers(netns, tmp_path):
    with node(netns, tmp_path) as srv:
        a, b = Tagged(A), Tagged(B)
        port = srv.reconcile({key(): port_of(info(A), info(B))})[key()]
        drop_syns(B)
        for _ in range(6):
            fetch(port)
        health = srv._services[key()].health
        assert not health.usable(Endpoint(B, PORT))
        gevent.sleep(0.6)  # probes keep failing meanwhile: still out
        assert not health.usable(Endpoint(B, PORT))
        restore(B)
        # Back within one probe interval (+ the probe's own connect and the monitor's tick),
        # long before the 5 s back-off would end.
        took = wait_for(lambda: health.usable(Endpoint(B, PORT)), timeout=2.0)
        assert took < FAST.probe_interval + FAST.probe_timeout + 0.3
        assert B in {fetch(port)[0] for _ in range(6)}
        st = srv.stats()[key()]
        assert st.endpoint_readmissions_total == 1 and st.probe_failures_total >= 1
        a.stop(), b.stop()


def test_panic_tries_every_endpoint_when_all_are_ejected(netns, tmp_path):
    slow_probes = HealthSettings(consecutive_failures=2, base_ejection=30.0, max_ejection=30.0,
                                 probe_interval=60.0)
    with node(netns, tmp_path, health=slow_probes) as srv:
        # Both refuse (nothing listens): ejected after two failures each.
        port = srv.reconcile({key(): port_of(info(A), info(B))})[key()]
        for _ in range(3):
            with pytest.raises(ConnectionResetError):
                fetch(port)
        st = srv.stats()[key()]
        assert st.endpoints_ejected == 2 and st.panic == 1
        # One comes back; no probe will notice for a minute, but panic mode still tries
        # every endpoint, finds it, and that answer re-admits it.
        a = Tagged(A)
        assert fetch(port)[0] == A
        st = srv.stats()[key()]
        assert st.panic == 0 and st.endpoints_ejected == 1
        a.stop()


# -- locality, affinity ----------------------------------------------------------------------


def test_locality_order_this_node_then_zone_then_the_rest(netns, tmp_path):
    with node(netns, tmp_path) as srv:
        backends = [Tagged(ip) for ip in (A, B, C)]
        sp = port_of(info(A, node="edge-1", zone="zone-a"),
                     info(B, node="edge-2", zone="zone-a"),
                     info(C, node="cloud-1", zone="zone-z"))
        port = srv.reconcile({key(): sp})[key()]
        assert {fetch(port)[0] for _ in range(10)} == {A}
        backends[0].stop()  # this node's pod is gone (refused): the zone's next
        assert {fetch(port)[0] for _ in range(10)} == {B}
        backends[1].stop()
        assert {fetch(port)[0] for _ in range(10)} == {C}
        for b in backends:
            b.stop()


def test_a_new_node_identity_selects_again_and_keeps_health(netns, tmp_path):
    with node(netns, tmp_path) as srv:
        backends = [Tagged(ip) for ip in (A, B)]
        sp = port_of(info(A, node="edge-1"), info(B, node="edge-2"))
        port = srv.reconcile({key(): sp})[key()]
        assert {fetch(port)[0] for _ in range(6)} == {A}
        srv._services[key()].health.dial_failed(Endpoint(A, PORT), time.monotonic(), "x")
        srv.configure_endpoints(NodeIdentity("edge-2", "zone-a"), True, FAST, 16)
        assert {fetch(port)[0] for _ in range(6)} == {B}  # now B is this node's
        assert srv._services[key()].health.view(Endpoint(A, PORT), 0).consecutive_failures == 1
        srv.configure_endpoints(NodeIdentity("edge-2", "zone-a"), False, FAST, 16)
        assert {fetch(port)[0] for _ in range(6)} == {A, B}
        for b in backends:
            b.stop()


def test_locality_off_balances_over_all(netns, tmp_path):
    with node(netns, tmp_path, locality_aware=False) as srv:
        backends = [Tagged(ip) for ip in (A, B)]
        sp = port_of(info(A, node="edge-1"), info(B, node="cloud-1"))
        port = srv.reconcile({key(): sp})[key()]
        assert Counter(fetch(port)[0] for _ in range(10)) == {A: 5, B: 5}
        for b in backends:
            b.stop()


@pytest.mark.parametrize("policy", [LoadBalancerPolicy(),
                                    LoadBalancerPolicy(LoadBalancerKind.CONSISTENT_HASH_SOURCE_IP)])
def test_affinity_moves_off_an_ejected_endpoint(netns, tmp_path, policy):
    with node(netns, tmp_path) as srv:
        backends = [Tagged(ip) for ip in (A, B)]
        port = srv.reconcile({key(): port_of(info(A), info(B), affinity=True,
                                             policy=policy)})[key()]
        pinned = fetch(port)[0]
        assert {fetch(port)[0] for _ in range(5)} == {pinned}
        other = B if pinned == A else A
        drop_syns(pinned)
        for _ in range(FAST.consecutive_failures):
            assert fetch(port)[0] == other  # each failed over, and the last one ejected it
        assert {fetch(port)[0] for _ in range(5)} == {other}
        assert all(t < 0.1 for _, t in (fetch(port) for _ in range(5)))
        restore(pinned)
        health = srv._services[key()].health
        wait_for(lambda: health.usable(Endpoint(pinned, PORT)))
        assert {fetch(port)[0] for _ in range(5)} == {other}  # the new pin holds
        for b in backends:
            b.stop()


# -- kube-proxy's selection rules, end to end ------------------------------------------------


@pytest.mark.parametrize("endpoints,internal,expected", [
    # No ready endpoint anywhere: the serving-and-terminating ones serve.
    ([info(A, ready=False, terminating=True), info(B, ready=False)], "Cluster", {A}),
    # internalTrafficPolicy: Local: only this node's.
    ([info(A, node="edge-1"), info(B, node="edge-2")], "Local", {A}),
    # ...and this node's terminating one before any remote one.
    ([info(A, node="edge-1", ready=False, terminating=True), info(B, node="edge-2")], "Local",
     {A}),
    # Zone hints (PreferClose): the hinted zone's, not this node's nearest.
    ([info(A, zones=["zone-b"]), info(B, zones=["zone-a"]), info(C, zones=["zone-a"])],
     "Cluster", {B, C}),
    # Node hints (PreferSameNode).
    ([info(A, nodes=["edge-2"], zones=["zone-a"]), info(B, nodes=["edge-1"], zones=["zone-a"])],
     "Cluster", {B}),
    # Hints missing on one endpoint: no topology.
    ([info(A, zones=["zone-b"]), info(B)], "Cluster", {A, B}),
])
def test_selection_rules_decide_which_backends_answer(netns, tmp_path, endpoints, internal,
                                                      expected):
    with node(netns, tmp_path, locality_aware=False) as srv:
        backends = [Tagged(ip) for ip in (A, B, C)]
        port = srv.reconcile({key(): port_of(*endpoints, internal=internal)})[key()]
        assert {fetch(port)[0] for _ in range(12)} == expected
        for b in backends:
            b.stop()


def test_internal_local_without_a_local_endpoint_refuses(netns, tmp_path):
    with node(netns, tmp_path) as srv:
        remote = Tagged(B)
        port = srv.reconcile({key(): port_of(info(B, node="edge-2"), internal="Local")})[key()]
        t0 = time.monotonic()
        with pytest.raises(ConnectionResetError):
            fetch(port)  # refused at once, never sent to the other node's endpoint
        assert time.monotonic() - t0 < 0.2
        st = srv.stats()[key()]
        assert st.refused_no_local_total == 1 and st.dial_failures_total == 0
        assert srv.endpoint_reports()[key()].refused
        remote.stop()


# -- UDP sessions ----------------------------------------------------------------------------


class UdpEcho:
    def __init__(self, ip: str, port: int = PORT) -> None:
        self.sock = gsocket.socket(gsocket.AF_INET, gsocket.SOCK_DGRAM)
        self.sock.bind((ip, port))
        self.ip = ip
        self.task = gevent.spawn(self._serve)

    def _serve(self) -> None:
        while True:
            data, addr = self.sock.recvfrom(2048)
            self.sock.sendto(self.ip.encode(), addr)

    def stop(self) -> None:
        self.task.kill()
        self.sock.close()


def ask(port: int, sock=None, timeout: float = 0.5) -> str | None:
    own = sock is None
    sock = sock or gsocket.socket(gsocket.AF_INET, gsocket.SOCK_DGRAM)
    sock.settimeout(timeout)
    try:
        sock.sendto(b"q", (LISTEN.ipv4, port))
        return sock.recvfrom(2048)[0].decode()
    except gsocket.timeout:
        return None
    finally:
        if own:
            sock.close()


def test_udp_endpoint_refusing_with_icmp_is_ejected_and_its_sessions_move(netns, tmp_path):
    with node(netns, tmp_path) as srv:
        live = UdpEcho(A)
        dead = UdpEcho(B)
        u = key("dns", Protocol.UDP)
        port = srv.reconcile({u: port_of(info(A), info(B), protocol=Protocol.UDP,
                                         name="dns")})[u]
        clients = [gsocket.socket(gsocket.AF_INET, gsocket.SOCK_DGRAM) for _ in range(8)]
        assert {ask(port, c) for c in clients} == {A, B}
        dead.stop()  # B's port now answers with ICMP port unreachable
        answers = [ask(port, c) for c in clients for _ in range(3)]
        assert None in answers  # what went to B before anybody knew is lost (it is UDP)
        health = srv._services[u].health
        assert not health.usable(Endpoint(B, PORT))
        # Every client is served by A now, on its existing socket or a new one.
        assert {ask(port, c) for c in clients} == {A}
        assert {ask(port) for _ in range(8)} == {A}
        st = srv.stats()[u]
        assert st.endpoint_ejections_total == 1 and st.probes_total == 0  # UDP is not probed
        for c in clients:
            c.close()
        live.stop()


def test_silent_udp_endpoint_stays_in(netns, tmp_path):
    with node(netns, tmp_path) as srv:
        live = UdpEcho(A)
        silent = gsocket.socket(gsocket.AF_INET, gsocket.SOCK_DGRAM)
        silent.bind((B, PORT))  # receives, never answers, sends no ICMP
        u = key("dns", Protocol.UDP)
        port = srv.reconcile({u: port_of(info(A), info(B), protocol=Protocol.UDP,
                                         name="dns")})[u]
        answers = [ask(port, timeout=0.2) for _ in range(8)]
        assert answers.count(A) == 4 and answers.count(None) == 4
        assert srv._services[u].health.usable(Endpoint(B, PORT))
        silent.close()
        live.stop()


# -- externalTrafficPolicy: Local through the real rules --------------------------------------

POD_FETCH = """
import socket, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
seen = []
for _ in range(n):
    try:
        s = socket.create_connection((host, port), timeout=3)
        try:
            seen.append(s.recv(64).decode() or "closed")
        finally:
            s.close()
    except ConnectionResetError:  # refused: reset right after the handshake
        seen.append("reset")
print(" ".join(sorted(set(seen))))
"""


def test_external_traffic_policy_local_through_the_rules(netns_factory, tmp_path):
    import sys

    from edgeproxy.rules.render import render_rules
    from tests.support.netns import veth_pair

    node_ns, pod = netns_factory("epnode"), netns_factory("eppod")
    veth_pair(pod, node_ns, ["198.18.0.2/24"], ["198.18.0.1/24"])
    pod.run(["ip", "route", "add", "default", "via", "198.18.0.1"])
    external_ip, vip = "198.18.0.1", "198.19.0.10"  # an external IP that is the node's own

    def from_pod(host: str, n: int = 8) -> set[str]:
        out = gsub.run(pod.command([sys.executable, "-c", POD_FETCH, host, "80", str(n)]),
                       capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        return set(out.stdout.split())

    def serve(a_node: str):
        sp = ServicePort(key(), 80, (vip,), external_ips=(external_ip,),
                         endpoints=(Endpoint(A, PORT), Endpoint(B, PORT)),
                         endpoint_info=(info(A, node=a_node), info(B, node="edge-2")),
                         traffic=TrafficPolicy("Cluster", "Local"))
        main = srv.reconcile({key(): sp})
        rs = render_rules({key(): sp}, main, LISTEN, second_ports=srv.second_ports)
        for table in rs.tables(4):
            gsub.run(["iptables-restore", "--noflush"], input=rs.restore_text(4, table),
                     text=True, check=True, timeout=10)

    with node(node_ns, tmp_path, locality_aware=False) as srv:
        backends = [Tagged(A), Tagged(B)]
        srv.sync_routes([vip])
        serve("edge-1")
        assert key() in srv.second_ports
        assert from_pod(external_ip) == {A}  # external traffic: this node's endpoint only
        assert from_pod(vip) == {A, B}  # the cluster IP: internalTrafficPolicy Cluster
        # From the node itself, an external address gets the Cluster set (kube-proxy).
        assert {fetch_from_host(external_ip) for _ in range(8)} == {A, B}
        # No endpoint on this node any more: external traffic is refused, never sent to
        # edge-2; the cluster IP keeps working.
        serve("edge-3")
        assert from_pod(external_ip) == {"reset"}
        assert from_pod(vip) == {A, B}
        assert srv.stats()[key()].refused_no_local_total >= 1
        for b in backends:
            b.stop()


def fetch_from_host(host: str, port: int = 80) -> str:
    s = gsocket.create_connection((host, port), timeout=3)
    try:
        return s.recv(64).decode()
    finally:
        s.close()
