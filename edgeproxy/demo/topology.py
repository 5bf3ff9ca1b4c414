"""A small edge node in network namespaces: what `edgeproxy demo`, the e2e tests and the
benchmarks run edgeproxy against.

    pod 198.18.2.10 ──veth── 198.18.2.1  node  198.18.1.1 ──veth── backends 198.18.1.11/.12/.13/.21
    (client, default          (edgeproxy, the stand-in          (web :8080 answering with its
     route via the node)       kube-proxy, no default route:    name, echo :7000, metrics :9100,
                               an offline edge node)            dnsmasq :5353)

The cluster IPs (198.19.0.0/16) exist nowhere: they are only matched by nat rules, exactly as
on a real node. Every command runs through ``ip netns exec``; the host's own namespace is never
touched. Addresses come from the benchmarking range 198.18.0.0/15. The backends and cluster IPs
are those of the example manifests (config/examples, shipped as edgeproxy.resources); a
benchmark that brings its own servers builds the namespaces alone (``servers=False``).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field

from edgeproxy.demo.netns import NetNS, veth_pair

NODE_BACKEND_SIDE = "198.18.1.1"
NODE_POD_SIDE = "198.18.2.1"
POD_ADDR = "198.18.2.10"
NODE_BACKEND_IF = "eth-be"  # the node's interfaces towards the backends and the pod
NODE_POD_IF = "eth-pod"

# Backends of the example manifests (web-3 is the EndpointSlice's not-ready address, used by
# reloads).
WEB_BACKENDS = {"web-1": "198.18.1.11", "web-2": "198.18.1.12", "web-3": "198.18.1.13"}
DNS_BACKEND = "198.18.1.21"
WEB_PORT = 8080
ECHO_PORT = 7000
METRICS_PORT = 9100
DNS_PORT = 5353
DNS_RECORD = ("web.default.svc.cluster.local", "198.19.0.10")
# A name only the upstream (dnsmasq) knows: what edgeproxy's DNS forwards, caches, and serves
# stale when the upstream is gone.
UPSTREAM_RECORD = ("www.example.org", "192.0.2.80")

# Cluster IPs of the example manifests.
WEB_VIP = "198.19.0.10"
ECHO_VIP = "198.19.0.20"
METRICS_VIP = "198.19.0.30"  # labelled: left to (stand-in) kube-proxy
DNS_VIP = "198.19.0.53"


class TopologyError(RuntimeError):
    """Something in the namespaces did not come up; the message says what and how it failed."""


def start_dnsmasq(ns: NetNS, listen: str, port: int, options: list[str],
                  log_facility: str = "-", timeout: float = 5.0) -> subprocess.Popen:
    """dnsmasq in ``ns`` answering on ``listen``:``port`` from ``options`` alone (no config
    file, resolv.conf or /etc/hosts), in the foreground; returns once its port is bound.
    TopologyError (with its stderr) when it exits or does not bind within ``timeout``."""
    proc = ns.popen(["dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv",
                     "--no-hosts", "--bind-interfaces", f"--listen-address={listen}",
                     f"--port={port}", "--pid-file=", "--user=root",
                     f"--log-facility={log_facility}", *options],
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise TopologyError(f"dnsmasq exited: {proc.stderr.read() if proc.stderr else ''}")
        if ns.run(["ss", "-Hlun", f"src {listen}:{port}"], check=False).stdout.strip():
            return proc
        time.sleep(0.05)
    proc.kill()
    raise TopologyError(f"dnsmasq did not bind {listen}:{port} within {timeout:.0f} s")


@dataclass
class Topology:
    """pod, node and backends namespaces (with the example's servers running unless
    ``servers`` is False); `start()` then `stop()`, or use it as a context manager."""

    prefix: str = "ep"
    servers: bool = True
    node: NetNS = field(init=False)
    pod: NetNS = field(init=False)
    backends: NetNS = field(init=False)
    processes: list[subprocess.Popen] = field(default_factory=list, init=False)
    _started: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self.node = NetNS(f"{self.prefix}-node")
        self.pod = NetNS(f"{self.prefix}-pod")
        self.backends = NetNS(f"{self.prefix}-be")

    def start(self) -> "Topology":
        self._started = True
        for ns in (self.node, self.pod, self.backends):
            ns.create()
        backend_addrs = [f"{a}/24" for a in (*WEB_BACKENDS.values(), DNS_BACKEND)]
        veth_pair(self.node, self.backends, [f"{NODE_BACKEND_SIDE}/24"], backend_addrs,
                  NODE_BACKEND_IF, "eth0")
        veth_pair(self.node, self.pod, [f"{NODE_POD_SIDE}/24"], [f"{POD_ADDR}/24"],
                  NODE_POD_IF, "eth0")
        self.pod.run(["ip", "route", "add", "default", "via", NODE_POD_SIDE])
        self.backends.run(["ip", "route", "add", "default", "via", NODE_BACKEND_SIDE])
        # The node routes between pod and backends; it has no default route (offline node).
        self.node.run(["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        if self.servers:
            self._start_backend_servers()
            self._start_dnsmasq()
        return self

    def _start_backend_servers(self) -> None:
        spec = {"web": WEB_BACKENDS,
                "echo": {"echo-1": WEB_BACKENDS["web-1"], "echo-2": WEB_BACKENDS["web-2"]},
                "metrics": {"node-metrics": WEB_BACKENDS["web-1"]}}
        proc = self.backends.popen([sys.executable, "-m", "edgeproxy.demo.backends",
                                    json.dumps(spec)],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.processes.append(proc)
        line = proc.stdout.readline() if proc.stdout else ""
        if line.strip() != "ready":
            proc.kill()
            err = proc.stderr.read() if proc.stderr else ""
            raise TopologyError(f"backend servers did not start: {err.strip()[-800:]}")

    def _start_dnsmasq(self) -> None:
        if shutil.which("dnsmasq") is None:
            raise TopologyError("dnsmasq is not installed; run ./scripts/bootstrap")
        name, addr = DNS_RECORD
        self.processes.append(start_dnsmasq(
            self.backends, DNS_BACKEND, DNS_PORT,
            [f"--host-record={name},{addr}", "--host-record={},{}".format(*UPSTREAM_RECORD),
             "--local-ttl=60"]))

    def stop(self) -> None:
        for proc in self.processes:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
        for proc in self.processes:
            try:
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                proc.kill()
            for stream in (proc.stdout, proc.stderr):
                if stream:
                    stream.close()
        self.processes.clear()
        if self._started:
            for ns in (self.pod, self.backends, self.node):
                ns.delete()
            self._started = False

    def __enter__(self) -> "Topology":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()
