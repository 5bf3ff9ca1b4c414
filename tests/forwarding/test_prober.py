"""HealthMonitor: probes of ejected endpoints over real sockets (loopback, and a namespace
where SYNs vanish), their bound, their RST close, and the back-off clock."""

from __future__ import annotations

import random

import gevent
import pytest
from gevent import socket as gsocket

from edgeproxy.forwarding.budget import SocketBudget
from edgeproxy.forwarding.health import EndpointHealth, HealthSettings
from edgeproxy.forwarding.prober import HealthMonitor
from tests.forwarding.conftest import dead_endpoint, key
from tests.forwarding.test_server import (A, B, C, Tagged, drop_syns, fetch, info, node,
                                          port_of, restore, wait_for)


def ejected(ep, **settings) -> EndpointHealth:
    h = EndpointHealth(HealthSettings(consecutive_failures=1, **settings),
                       rng=random.Random(1))
    h.update([ep])
    h.dial_failed(ep, 0.0, "refused")
    return h


def test_probe_failures_keep_it_out_and_an_answer_brings_it_back():
    ep = dead_endpoint()
    h = ejected(ep, probe_interval=0.05, probe_timeout=0.5, base_ejection=60.0)
    monitor = HealthMonitor(tick=0.02)
    monitor.watch(h)
    monitor.start()
    try:
        wait_for(lambda: h.probe_failures_total >= 2, 2.0)
        assert not h.usable(ep)
        listener = gsocket.socket()
        listener.setsockopt(gsocket.SOL_SOCKET, gsocket.SO_REUSEADDR, 1)
        listener.bind((ep.ip, ep.port))
        listener.listen(8)
        wait_for(lambda: h.usable(ep), 2.0)
        assert h.readmissions_total == 1
        gevent.sleep(0.1)
        assert monitor.active == set()  # nothing ejected: the monitor sleeps
        # The probe hung up with RST, not FIN: nothing lingers in TIME_WAIT on our side.
        probe, _ = listener.accept()
        probe.settimeout(1)
        with pytest.raises(ConnectionResetError):
            probe.recv(1)
        probe.close()
        listener.close()
    finally:
        monitor.stop()


def test_no_probe_without_a_spare_descriptor():
    ep = dead_endpoint()
    h = ejected(ep, probe_interval=0.01)
    budget = SocketBudget(1)
    budget.take(1, "tcp")
    monitor = HealthMonitor(budget=budget)
    monitor.watch(h)
    monitor.run_once(10.0)
    assert monitor.skipped_total == 1 and h.probes_total == 0 and budget.used == 1


@pytest.mark.netns
def test_probes_are_bounded(netns, tmp_path):
    many = HealthSettings(consecutive_failures=1, base_ejection=10.0, probe_interval=0.2,
                          probe_timeout=0.5)
    with node(netns, tmp_path, health=many, probe_concurrency=2) as srv:
        state = {key(f"s{i}"): port_of(info(ip), name=f"s{i}") for i, ip in enumerate((A, B, C))}
        ports = srv.reconcile(state)
        for ip in (A, B, C):
            drop_syns(ip)
        # One connection each: its first dial times out and ejects the only endpoint (the
        # client then gets panic-mode retries, which fail too).
        clients = [gevent.spawn(fetch, ports[k], None, 10) for k in state]
        wait_for(lambda: all(srv.stats()[k].endpoints_ejected for k in state), 3.0)
        wait_for(lambda: srv.monitor.skipped_total >= 1, 3.0)
        assert srv.monitor.in_flight <= 2  # three endpoints due a probe, two at a time
        for ip in (A, B, C):
            restore(ip)
        backends = [Tagged(ip) for ip in (A, B, C)]
        wait_for(lambda: all(srv.stats()[k].endpoints_ejected == 0 for k in state), 5.0)
        gevent.joinall(clients, timeout=10)
        for b in backends:
            b.stop()
