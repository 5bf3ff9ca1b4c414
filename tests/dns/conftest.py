"""A DNS server thread in a namespace, an upstream dnsmasq behind a veth, and clients.

    node namespace: DnsServer on 198.18.5.53:53 (in a thread with its own gevent hub)
        └─ veth 198.18.6.1 ── 198.18.6.2 upstream namespace: dnsmasq (host records)

The test thread stays outside the hub, so dig (a subprocess) and dnspython block freely.
"""

from __future__ import annotations

import shutil
import subprocess
import threading

import pytest

from edgeproxy.demo.topology import start_dnsmasq

SERVER = "198.18.5.53"
UPSTREAM = "198.18.6.2"
UPSTREAM_RECORDS = {"www.example.org": "192.0.2.10", "api.example.org": "192.0.2.11",
                    "upstream.example": "192.0.2.20"}
BIG_NAME = "big.example.org"  # 120 A records: more than one UDP answer holds


class ServerThread(threading.Thread):
    def __init__(self, ns, settings, zone):
        super().__init__(daemon=True, name="dns-server")
        self.ns, self.settings, self.zone = ns, settings, zone
        self.ready = threading.Event()
        self.done = threading.Event()
        self.server = None
        self.hub = None
        self.error = None

    def run(self):
        import gevent

        from edgeproxy.dns.server import DnsServer

        try:
            self.ns.enter_for_good()
            self.hub = gevent.get_hub()
            self.server = DnsServer([(SERVER, 53)], self.settings)
            self.server.update(self.zone)
            self.server.start()
        except Exception as exc:  # noqa: BLE001 - reported to the test
            self.error = exc
            self.ready.set()
            return
        self.ready.set()
        while not self.done.is_set():
            gevent.sleep(0.02)
        self.server.stop()

    def call(self, fn, *args):
        """Run ``fn(*args)`` in the server's hub (the only thread that may touch it)."""
        result = threading.Event()
        box = {}

        def run():
            box["value"] = fn(*args)
            result.set()

        self.hub.loop.run_callback_threadsafe(run)
        assert result.wait(5)
        return box["value"]

    def stop(self):
        self.done.set()
        self.join(5)


@pytest.fixture
def dns_env(netns_factory):
    """(node, upstream namespace, start(settings, zone) -> ServerThread, dnsmasq control)."""
    from edgeproxy.demo.netns import veth_pair

    if shutil.which("dnsmasq") is None or shutil.which("dig") is None:
        pytest.skip("dnsmasq and dig are needed (./scripts/bootstrap)")
    node, upstream = netns_factory("epdns"), netns_factory("epup")
    node.run(["ip", "addr", "add", f"{SERVER}/32", "dev", "lo"])
    veth_pair(node, upstream, ["198.18.6.1/24"], [f"{UPSTREAM}/24"], "eth-up", "eth0")
    env = _Env(node, upstream)
    yield env
    env.close()


class _Env:
    def __init__(self, node, upstream):
        self.node, self.upstream = node, upstream
        self.threads: list[ServerThread] = []
        self.dnsmasq: subprocess.Popen | None = None

    def start_upstream(self, ttl: int = 300) -> None:
        records = [f"--host-record={n},{ip}" for n, ip in UPSTREAM_RECORDS.items()]
        records += [f"--host-record={BIG_NAME},192.0.2.{i}" for i in range(1, 121)]
        self.dnsmasq = start_dnsmasq(self.upstream, UPSTREAM, 53,
                                     [f"--local-ttl={ttl}", *records])

    def cut_upstream(self) -> None:
        """The uplink goes away: datagrams to the upstream vanish (timeouts, no ICMP)."""
        self.node.run(["ip", "link", "set", "eth-up", "down"])

    def start(self, zone, **settings) -> ServerThread:
        from edgeproxy.dns.server import DnsSettings

        settings.setdefault("upstreams", (UPSTREAM,))
        settings.setdefault("upstream_timeout", 1.0)
        thread = ServerThread(self.node, DnsSettings(**settings), zone)
        thread.start()
        assert thread.ready.wait(10)
        if thread.error:
            raise thread.error
        self.threads.append(thread)
        return thread

    def dig(self, *args: str, timeout: float = 10) -> str:
        result = self.node.run(["dig", f"@{SERVER}", "+time=2", "+tries=1", *args],
                               check=False, timeout=timeout)
        return result.stdout

    def close(self) -> None:
        for thread in self.threads:
            thread.stop()
        if self.dnsmasq is not None:
            self.dnsmasq.kill()
            self.dnsmasq.wait(5)
