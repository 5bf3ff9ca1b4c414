"""The edgeproxy variant of bench/forwarding.py: the real ProxyServer plus its nat rules, run
as one process inside the benchmark's "node" namespace.

Protocol (parent = bench/forwarding.py)::

    ip netns exec NODE python bench/_edgeproxy_node.py SPEC.json

SPEC.json::

    {"state_dir": "/tmp/...",                       # ProxyServer's state dir (ports.json)
     "iptables_restore": "iptables-restore",        # the restore binary the benchmark uses
     "services": [{"name": "web", "protocol": "TCP", "vip": "198.19.0.11", "port": 80,
                   "endpoints": [["198.18.1.11", 8080]]}, ...]}

The driver builds one ServicePort per service (namespace "bench"), starts
``edgeproxy.forwarding.server.ProxyServer`` with the default ListenAddresses (edgeproxy0,
169.254.96.17), calls ``reconcile``, ``sync_routes`` for the VIPs and installs the nat rules
(``edgeproxy.rules.render.render_rules`` fed to ``iptables-restore --noflush``).

Then it prints exactly one JSON line on stdout and serves:

    {"ok": true, "pid": N, "proxy_ports": {"web": 61000, ...}, "splice": bool, "routes": [...]}
    {"ok": false, "error": "..."}              # and exit status 1

It stops on SIGTERM/SIGINT or when its stdin reaches EOF (the parent died), calling
``ProxyServer.stop(grace=0)``. The rules are left in place: the namespace is deleted anyway.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import json  # noqa: E402
import resource  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402

NAMESPACE = "bench"


def _service_ports(spec: dict) -> dict:
    from edgeproxy.model import Endpoint, Protocol, ServicePort, ServicePortKey

    ports = {}
    for svc in spec["services"]:
        key = ServicePortKey(NAMESPACE, svc["name"], "", Protocol(svc["protocol"]))
        ports[key] = ServicePort(
            key=key, port=int(svc["port"]), cluster_ips=(svc["vip"],),
            endpoints=tuple(sorted(Endpoint(ip, int(p)) for ip, p in svc["endpoints"])))
    return ports


def _restore(binary: str, text: str) -> None:
    result = subprocess.run([binary, "--noflush"], input=text, capture_output=True, text=True,
                            timeout=30)
    if result.returncode != 0:
        raise RuntimeError(f"{binary} --noflush failed: {result.stderr.strip()}\n{text}")


def _install_rules(binary: str, ports: dict, proxy_ports: dict, listen) -> None:
    from edgeproxy.rules.render import render_rules

    ruleset = render_rules(ports, proxy_ports, listen)
    for table in ruleset.tables(4):
        _restore(binary, ruleset.restore_text(4, table))


def _emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main(argv: list[str]) -> int:
    import os

    # 5,000 idle client connections are 10,000 sockets in the proxy.
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    spec = json.loads(Path(argv[0]).read_text())
    try:
        from edgeproxy.forwarding.server import ProxyServer
        from edgeproxy.model import ListenAddresses

        listen = ListenAddresses()
        ports = _service_ports(spec)
        server = ProxyServer(listen, state_dir=Path(spec["state_dir"]), drain_grace=0.0)
        server.start()
        proxy_ports = server.reconcile(ports)
        missing = [str(k) for k in ports if k not in proxy_ports]
        if missing:
            raise RuntimeError(f"reconcile gave no proxy port to {', '.join(missing)}")
        routes = sorted(server.sync_routes(sp.cluster_ips[0] for sp in ports.values()) or ())
        _install_rules(spec.get("iptables_restore", "iptables-restore"), ports, proxy_ports,
                       listen)
    except Exception as exc:  # report every failure to the parent, which keeps going
        _emit({"ok": False, "error": f"{type(exc).__name__}: {exc}",
               "traceback": traceback.format_exc()})
        return 1
    splice = bool(getattr(getattr(server, "pipes", None), "enabled", False))
    _emit({"ok": True, "pid": os.getpid(), "splice": splice, "routes": routes,
           "proxy_ports": {k.name: p for k, p in proxy_ports.items()}})

    done = gevent.event.Event()
    gevent.signal_handler(signal.SIGTERM, done.set)
    gevent.signal_handler(signal.SIGINT, done.set)

    def watch_stdin() -> None:
        # A non-blocking read through the hub: a plain sys.stdin.read would block every greenlet.
        from gevent.os import make_nonblocking, nb_read
        try:
            make_nonblocking(0)
            while nb_read(0, 4096):
                pass
        except OSError:
            pass
        done.set()

    gevent.spawn(watch_stdin)
    done.wait()
    server.stop(grace=0)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
