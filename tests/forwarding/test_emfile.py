"""accept() failing with EMFILE backs off instead of spinning, and recovers (kube-proxy panics).

The proxy runs in a subprocess with a low RLIMIT_NOFILE; the test process is the client and
the backend."""

from __future__ import annotations

import json
import sys
import textwrap

import gevent
from gevent import socket as gsocket
from gevent import subprocess as gsub

CHILD = textwrap.dedent("""
    import json, os, resource, sys, tempfile, time
    from pathlib import Path
    import gevent
    from edgeproxy.forwarding.ports import PortRange
    from edgeproxy.forwarding.server import ProxyServer
    from edgeproxy.model import Endpoint, ListenAddresses, Protocol, ServicePort, ServicePortKey

    backend_port = int(sys.argv[1])
    k = ServicePortKey("default", "web", "", Protocol.TCP)
    srv = ProxyServer(ListenAddresses("127.0.0.1", None, "lo"), PortRange(),
                      Path(tempfile.mkdtemp()), manage_interface=False)
    srv.start()
    port = srv.reconcile({k: ServicePort(k, 80, ("198.19.0.10",),
                          endpoints=(Endpoint("127.0.0.1", backend_port),))})[k]
    used = len(os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (used + 6, used + 6))
    print(json.dumps({"port": port}), flush=True)
    gevent.sleep(1.5)  # the parent floods us with connections now
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    gevent.sleep(1.0)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
    st = srv.stats()[k]
    print(json.dumps({"cpu": cpu, "accept_errors": st.accept_errors_total,
                      "active": st.active_connections}), flush=True)
    gevent.sleep(4)
""")


def test_emfile_on_accept_backs_off_and_recovers(backends):
    backend = backends(tag=b"b:")
    child = gsub.Popen([sys.executable, "-c", CHILD, str(backend.endpoint.port)],
                       stdout=gsub.PIPE, text=True)
    try:
        port = json.loads(child.stdout.readline())["port"]
        clients = []
        for _ in range(12):
            try:
                s = gsocket.create_connection(("127.0.0.1", port), timeout=2)
                s.sendall(b"x")
            except OSError:
                continue  # accepted, but no descriptor left to dial: reset by the proxy
            clients.append(s)
        report = json.loads(child.stdout.readline())
        assert report["accept_errors"] >= 1
        assert report["cpu"] < 0.5  # backing off, not spinning on a readable listener
        assert report["active"] >= 1
        for s in clients:
            s.close()
        gevent.sleep(1.2)  # back-off is at most 1 s
        with gsocket.create_connection(("127.0.0.1", port), timeout=3) as s:
            s.sendall(b"again")
            assert s.recv(100) == b"b:again"
    finally:
        child.kill()
        child.wait()
