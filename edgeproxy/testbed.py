"""A small edge node in network namespaces: what `edgeproxy demo`, the e2e tests and the
reload benchmark run the real daemon against.

Owns the topology (three namespaces joined by veth pairs), the backend servers the example
manifests point at, the stand-in kube-proxy and the `edgeproxy run` subprocess:

    pod 198.18.2.10 ──veth── 198.18.2.1  node  198.18.1.1 ──veth── backends 198.18.1.11/.12/.13/.21
    (client, default          (edgeproxy run, stand-in         (web :8080 answering with its
     route via the node)       kube-proxy, no default route:    name, echo :7000, metrics :9100,
                               an offline edge node)            dnsmasq :5353)

The cluster IPs (198.19.0.0/16) exist nowhere: they are only matched by nat rules, exactly as
on a real node. Every command runs through ``ip netns exec``; the host's own namespace is never
touched. Addresses come from the benchmarking range 198.18.0.0/15.

Run as ``python -m edgeproxy.testbed serve SPEC_JSON`` the module is the backend server itself
(stdlib threads, one line "ready" on stdout once every socket is bound).
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import signal
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Sequence

from edgeproxy.netns import NetNS, veth_pair

NODE_BACKEND_SIDE = "198.18.1.1"
NODE_POD_SIDE = "198.18.2.1"
POD_ADDR = "198.18.2.10"

# Backends of config/examples (web-3 is the EndpointSlice's not-ready address, used by reloads).
WEB_BACKENDS = {"web-1": "198.18.1.11", "web-2": "198.18.1.12", "web-3": "198.18.1.13"}
DNS_BACKEND = "198.18.1.21"
WEB_PORT = 8080
ECHO_PORT = 7000
METRICS_PORT = 9100
DNS_PORT = 5353
DNS_RECORD = ("web.default.svc.cluster.local", "198.19.0.10")

# Cluster IPs of config/examples.
WEB_VIP = "198.19.0.10"
ECHO_VIP = "198.19.0.20"
METRICS_VIP = "198.19.0.30"  # labelled: left to (stand-in) kube-proxy
DNS_VIP = "198.19.0.53"

HEALTHZ = "127.0.0.1:10266"
METRICS = "127.0.0.1:10259"


class TestbedError(RuntimeError):
    """Something in the namespaces did not come up; the message says what and how it failed."""


# --------------------------------------------------------------------------- backend server


def _serve(spec: dict) -> None:
    """Backend server process: HTTP name servers, TCP echo and a metrics page, all threaded."""

    class Quiet(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 512

        def server_bind(self) -> None:
            # HTTPServer.server_bind does a reverse DNS lookup (getfqdn): seconds of resolver
            # timeouts in a namespace without DNS. Skip it.
            socketserver.TCPServer.server_bind(self)
            self.server_name, self.server_port = self.server_address[:2]

    def name_handler(name: str, body_fn) -> type[BaseHTTPRequestHandler]:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                body = body_fn(name, self).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:  # no per-request log lines
                pass

        return Handler

    def web_body(name: str, req: BaseHTTPRequestHandler) -> str:
        return f"{name}\n"

    def metrics_body(name: str, req: BaseHTTPRequestHandler) -> str:
        return f"# node-metrics stand-in on {name}\nnode_up 1\n"

    class Echo(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            for line in self.rfile:
                self.wfile.write(f"{self.server.echo_name}: ".encode() + line)  # type: ignore

    class EchoServer(socketserver.ThreadingTCPServer):
        daemon_threads = True
        allow_reuse_address = True
        request_queue_size = 512

    # Blocked before the threads start so only sigwait() below receives them.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    servers: list[socketserver.BaseServer] = []
    for name, addr in spec["web"].items():
        servers.append(Quiet((addr, WEB_PORT), name_handler(name, web_body)))
    for name, addr in spec["echo"].items():
        srv = EchoServer((addr, ECHO_PORT), Echo)
        srv.echo_name = name  # type: ignore[attr-defined]
        servers.append(srv)
    for name, addr in spec["metrics"].items():
        servers.append(Quiet((addr, METRICS_PORT), name_handler(name, metrics_body)))
    for srv in servers:
        threading.Thread(target=srv.serve_forever, daemon=True).start()
    print("ready", flush=True)
    signal.sigwait({signal.SIGTERM, signal.SIGINT})


# --------------------------------------------------------------------------- topology


@dataclass
class Topology:
    """pod, node and backends namespaces with servers running; `start()` then `stop()`."""

    prefix: str = "ep"
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
                  "eth-be", "eth0")
        veth_pair(self.node, self.pod, [f"{NODE_POD_SIDE}/24"], [f"{POD_ADDR}/24"],
                  "eth-pod", "eth0")
        self.pod.run(["ip", "route", "add", "default", "via", NODE_POD_SIDE])
        self.backends.run(["ip", "route", "add", "default", "via", NODE_BACKEND_SIDE])
        # The node routes between pod and backends; it has no default route (offline node).
        self.node.run(["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        self._start_backend_servers()
        self._start_dnsmasq()
        return self

    def _start_backend_servers(self) -> None:
        spec = {"web": WEB_BACKENDS,
                "echo": {"echo-1": WEB_BACKENDS["web-1"], "echo-2": WEB_BACKENDS["web-2"]},
                "metrics": {"node-metrics": WEB_BACKENDS["web-1"]}}
        proc = self.backends.popen([sys.executable, "-m", "edgeproxy.testbed", "serve",
                                    json.dumps(spec)],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.processes.append(proc)
        line = proc.stdout.readline() if proc.stdout else ""
        if line.strip() != "ready":
            proc.kill()
            err = proc.stderr.read() if proc.stderr else ""
            raise TestbedError(f"backend servers did not start: {err.strip()[-800:]}")

    def _start_dnsmasq(self) -> None:
        if shutil.which("dnsmasq") is None:
            raise TestbedError("dnsmasq is not installed; run ./scripts/bootstrap")
        name, addr = DNS_RECORD
        proc = self.backends.popen(
            ["dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv",
             "--no-hosts", "--bind-interfaces", f"--listen-address={DNS_BACKEND}",
             f"--port={DNS_PORT}", f"--host-record={name},{addr}", "--pid-file=",
             "--user=root", "--log-facility=-"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.processes.append(proc)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise TestbedError(f"dnsmasq exited: {proc.stderr.read() if proc.stderr else ''}")
            probe = self.backends.run(["ss", "-Hlun", f"src {DNS_BACKEND}:{DNS_PORT}"],
                                      check=False)
            if probe.stdout.strip():
                return
            time.sleep(0.05)
        raise TestbedError("dnsmasq did not bind its port within 5 s")

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


# --------------------------------------------------------------------------- stand-in kube-proxy


def _ipt(ns: NetNS, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return ns.run(["iptables", "-w", "5", *args], check=check)


def install_kube_proxy(node: NetNS, services: Sequence[tuple[str, int, str, int]]) -> None:
    """What kube-proxy (iptables mode) leaves in nat: a KUBE-SERVICES chain jumped to from
    PREROUTING and OUTPUT (prepended, as kube-proxy does), one DNAT per (vip, port, ip, port).

    Also the kubelet's KUBE-IPTABLES-HINT chain in mangle, which is how kube-proxy (and
    edgeproxy's auto backend) tell which iptables flavour the node uses.
    """
    _ipt(node, "-t", "mangle", "-N", "KUBE-IPTABLES-HINT", check=False)
    _ipt(node, "-t", "nat", "-N", "KUBE-SERVICES", check=False)
    for vip, port, target, target_port in services:
        _ipt(node, "-t", "nat", "-A", "KUBE-SERVICES", "-d", f"{vip}/32", "-p", "tcp",
             "--dport", str(port), "-m", "comment", "--comment", "stand-in kube-proxy",
             "-j", "DNAT", "--to-destination", f"{target}:{target_port}")
    for chain in ("PREROUTING", "OUTPUT"):
        if _ipt(node, "-t", "nat", "-C", chain, *_KUBE_JUMP, check=False).returncode != 0:
            _ipt(node, "-t", "nat", "-I", chain, "1", *_KUBE_JUMP)


_KUBE_JUMP = ("-m", "comment", "--comment", "kubernetes service portals", "-j", "KUBE-SERVICES")


def kube_proxy_jumps_ahead(node: NetNS) -> None:
    """kube-proxy restarted after a flush: its jump is re-inserted at position 1, ahead of
    edgeproxy's (nobody moves an existing jump; whoever inserted last wins)."""
    for chain in ("PREROUTING", "OUTPUT"):
        while _ipt(node, "-t", "nat", "-D", chain, *_KUBE_JUMP, check=False).returncode == 0:
            pass
        _ipt(node, "-t", "nat", "-I", chain, "1", *_KUBE_JUMP)


def nat_chain_targets(node: NetNS, chain: str) -> list[str]:
    """Targets of the rules in a nat chain, in order (e.g. ['KUBE-PORTALS-CONTAINER', ...])."""
    out = _ipt(node, "-t", "nat", "-S", chain).stdout.splitlines()
    targets = []
    for line in out:
        parts = line.split()
        if parts[:1] == ["-A"] and "-j" in parts:
            targets.append(parts[parts.index("-j") + 1])
    return targets


def nat_listing(node: NetNS, *chains: str) -> str:
    """The real `iptables -t nat -nvL [CHAIN]` output for the given chains (all when none)."""
    if not chains:
        return _ipt(node, "-t", "nat", "-nvL").stdout
    return "\n".join(_ipt(node, "-t", "nat", "-nvL", c).stdout for c in chains)


def nat_save(node: NetNS) -> str:
    return node.run(["iptables-save", "-t", "nat"]).stdout


# --------------------------------------------------------------------------- clients


def http_get(ns: NetNS, host: str, port: int = 80, path: str = "/",
             headers: dict[str, str] | None = None, timeout: float = 2.0,
             connect_timeout: float | None = None) -> str:
    """GET over a fresh connection made inside `ns`; returns the body or raises OSError.
    ``connect_timeout`` (default: ``timeout``) bounds the handshake alone."""
    with ns.entered():
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with sock:
        sock.settimeout(timeout if connect_timeout is None else connect_timeout)
        sock.connect((host, port))
        sock.settimeout(timeout)
        lines = [f"GET {path} HTTP/1.0", f"Host: {host}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        chunks = []
        while True:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.") or b" 200 " not in head.split(b"\r\n", 1)[0]:
        raise OSError(f"unexpected HTTP answer from {host}:{port}: {head[:80]!r}")
    return body.decode(errors="replace")


def echo_line(ns: NetNS, host: str, port: int, text: str, timeout: float = 2.0) -> str:
    with ns.entered():
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with sock:
        sock.settimeout(timeout)
        sock.connect((host, port))
        sock.sendall(text.encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    return data.decode(errors="replace").strip()


def wait_until(predicate, timeout: float, interval: float = 0.02) -> float | None:
    """Poll `predicate()` (exceptions count as False); seconds it took, or None on timeout."""
    start = time.monotonic()
    while True:
        try:
            if predicate():
                return time.monotonic() - start
        except OSError:
            pass
        if time.monotonic() - start > timeout:
            return None
        time.sleep(interval)


# --------------------------------------------------------------------------- the daemon


class DaemonError(RuntimeError):
    """`edgeproxy run` did not start or answer; the message carries the end of its log."""


LISTEN_INTERFACE = "edgeproxy0"
_DUMMY_SUPPORT: dict[str, bool] = {}


def kernel_has_dummy(ns: NetNS) -> bool:
    """Whether `ip link add … type dummy` works (some VM kernels ship without the module)."""
    if ns.name not in _DUMMY_SUPPORT:
        probe = ns.run(["ip", "link", "add", "epprobe0", "type", "dummy"], check=False)
        _DUMMY_SUPPORT[ns.name] = probe.returncode == 0
        if probe.returncode == 0:
            ns.run(["ip", "link", "del", "epprobe0"], check=False)
    return _DUMMY_SUPPORT[ns.name]


def stand_in_listen_interface(node: NetNS) -> bool:
    """On a kernel without the dummy module, pre-create edgeproxy0 as a port-less bridge (it holds
    local addresses the same way) so the daemon finds its interface; True when it did so.
    edgeproxy itself needs the dummy module, as EdgeMesh does."""
    if kernel_has_dummy(node):
        return False
    if node.run(["ip", "link", "show", LISTEN_INTERFACE], check=False).returncode != 0:
        node.run(["ip", "link", "add", LISTEN_INTERFACE, "type", "bridge"])
    return True


def edgeproxy_argv() -> list[str]:
    """How to run edgeproxy: $EDGEPROXY_BIN when set (an installed package, a release binary),
    else this checkout's package with the running interpreter."""
    override = os.environ.get("EDGEPROXY_BIN")
    return [override] if override else [sys.executable, "-m", "edgeproxy"]


class Daemon:
    """The real `edgeproxy run` as a subprocess inside the node namespace.

    State dir and log live in `workdir`; healthz/metrics bind 127.0.0.1 of the node namespace
    (private to it, so several testbeds can run side by side).
    """

    def __init__(self, node: NetNS, manifests: Path, workdir: Path,
                 extra_args: Sequence[str] = (), nofile: int | None = None) -> None:
        self.node = node
        self.manifests = manifests
        self.workdir = workdir
        self.extra_args = list(extra_args)
        self.nofile = nofile
        self.log_path = workdir / "daemon.log"
        self.proc: subprocess.Popen | None = None
        self._log = None

    def command(self) -> list[str]:
        return [*edgeproxy_argv(), "run",
                "--manifests", str(self.manifests),
                "--state-dir", str(self.workdir / "state"),
                "--healthz-bind-address", HEALTHZ,
                "--metrics-bind-address", METRICS,
                *self.extra_args]

    def start(self) -> "Daemon":
        self.workdir.mkdir(parents=True, exist_ok=True)
        stand_in_listen_interface(self.node)
        self._log = open(self.log_path, "ab")
        nofile = self.nofile

        def raise_nofile() -> None:
            # As LimitNOFILE= in the unit would; capped by our own hard limit (containers).
            if nofile:
                soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
                want = nofile if hard == resource.RLIM_INFINITY else min(nofile, hard)
                resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))

        self.proc = self.node.popen(self.command(), stdout=self._log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, preexec_fn=raise_nofile)
        return self

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def get(self, path: str, port_spec: str = HEALTHZ, timeout: float = 2.0) -> tuple[int, str]:
        host, port = port_spec.rsplit(":", 1)
        with self.node.entered():
            # urllib connects lazily, so the socket must be made inside: use a raw connection.
            sock = socket.create_connection((host, int(port)), timeout=timeout)
        with sock:
            sock.settimeout(timeout)
            sock.sendall(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
            chunks = []
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                chunks.append(data)
        head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
        status_line = head.split(b"\r\n", 1)[0].split()
        code = int(status_line[1]) if len(status_line) > 1 else 0
        return code, body.decode(errors="replace")

    def wait_ready(self, timeout: float = 20.0) -> float:
        """Seconds until /readyz answered 200; DaemonError (with the log) if it never does."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if not self.running():
                raise DaemonError(f"`edgeproxy run` exited with {self.proc.returncode if self.proc else '?'}"
                                  f" before it was ready; its log:\n{self.log_tail()}")
            with contextlib.suppress(OSError, ValueError):
                if self.get("/readyz", timeout=0.5)[0] == 200:
                    return time.monotonic() - start
            time.sleep(0.05)
        raise DaemonError(f"`edgeproxy run` not ready after {timeout:.0f} s; its log:\n"
                          f"{self.log_tail()}")

    def status(self) -> dict:
        """`edgeproxy status -o json` run inside the node namespace, as an operator would."""
        result = self.node.run([*edgeproxy_argv(), "status", "-o", "json"], check=False)
        # Exit 1 with a document means "the guard holds a change": still a status.
        try:
            return json.loads(result.stdout)
        except ValueError:
            raise DaemonError(f"edgeproxy status failed ({result.returncode}): "
                              f"{result.stderr.strip()}") from None

    def metrics(self) -> str:
        code, body = self.get("/metrics", METRICS)
        if code != 200:
            raise DaemonError(f"/metrics answered {code}")
        return body

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            # `ip netns exec` execs the command, so the pid is the daemon's own.
            os.kill(self.proc.pid, sig)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout`; the exit code (None if it was not running)."""
        if self.proc is None:
            return None
        rc = self.proc.poll()
        if rc is None:
            self.signal(signal.SIGTERM)
            try:
                rc = self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                rc = self.proc.wait()
        if self._log:
            self._log.close()
            self._log = None
        return rc


def metric_value(metrics_text: str, name: str, labels: dict[str, str] | None = None) -> float | None:
    """Sum of the samples of `name` whose labels include `labels` (None when there is none)."""
    total, found = 0.0, False
    for line in metrics_text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        metric, _, value = line.rpartition(" ")
        base, _, label_text = metric.partition("{")
        if base != name:
            continue
        if labels and not all(f'{k}="{v}"' in label_text for k, v in labels.items()):
            continue
        total += float(value)
        found = True
    return total if found else None


def copy_examples(source: Path, target: Path) -> Path:
    """Copy a manifest directory to `target` with modes the daemon's ownership check accepts."""
    target.mkdir(parents=True, exist_ok=True)
    os.chmod(target, 0o755)
    for path in sorted(source.iterdir()):
        if path.is_file() and path.suffix in (".yaml", ".yml", ".json"):
            shutil.copyfile(path, target / path.name)
            os.chmod(target / path.name, 0o644)
    return target


def make_workdir(prefix: str = "edgeproxy-") -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(path, 0o755)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) == 2 and args[0] == "serve":
        _serve(json.loads(args[1]))
        return 0
    print("usage: python -m edgeproxy.testbed serve SPEC_JSON", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
