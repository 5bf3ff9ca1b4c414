"""Forwarding benchmark: edgeproxy against direct, kernel DNAT and haproxy, measured in one run.

Run (root, the benchmark creates and deletes its own network namespaces)::

    sudo .venv/bin/python bench/forwarding.py [--quick] [--json out.json] [--verbose]
    sudo .venv/bin/python bench/forwarding.py --only throughput,throughput_host --repeat 5

Topology: the demo's edge node (``edgeproxy.demo.topology``, three private namespaces, addresses
from 198.18.0.0/15; the host's own namespace is never touched: links are created inside the
namespaces) without the demo's servers; the benchmark starts its own backends on web-1's
address::

    pod  eth0 198.18.2.10/24 ──── eth-pod 198.18.2.1/24  NODE  eth-be 198.18.1.1/24 ──── eth0 198.18.1.11/24  backends
         default via .2.1         ip_forward=1, nat rules, proxies              default via .1.1

Variants, all set up at once and measured interleaved (figure by figure, variant by variant),
each on its own cluster IP so their rules never interact:

* ``direct``     client -> backend address, routed through the node (no NAT);
* ``dnat``       kube-proxy iptables mode: VIP 198.19.0.10 -> KUBE-SERVICES -> KUBE-SVC -> KUBE-SEP
                 -> DNAT to the backend (the kernel upper bound for any proxy);
* ``edgeproxy``  VIP 198.19.0.11 -> the real ``edgeproxy.forwarding.server.ProxyServer`` in a
                 subprocess of the node namespace (bench/_edgeproxy_node.py: reconcile, routes,
                 ``render_rules`` + ``iptables-restore --noflush``), listening on 169.254.96.17;
* ``haproxy``    VIP 198.19.0.12 DNATed to haproxy in tcp mode on 198.18.2.1 (config printed
                 with --verbose). ``nbthread 1`` by default: edgeproxy is one process with one
                 gevent hub, so one haproxy thread is the like-for-like comparison, and on two
                 cores shared by client, backend and proxy a second thread mostly adds contention
                 (``--haproxy-threads N`` to compare). haproxy does not splice unless told to
                 (``option splice-*``); it is left at that default.

Pod-path traffic to a VIP enters nat PREROUTING; host-path traffic (clients run in the node
namespace itself) enters nat OUTPUT. Backends: iperf3 -s, a static HTTP responder (haproxy
``http-request return`` when haproxy is installed: C, from memory, so it is not the bottleneck;
else the epoll responder of bench/_fwd_servers.py), a UDP echo and a TCP sink for idle
connections.

Figures (pod path unless marked host): single-stream throughput (iperf3), HTTP requests/s with
keep-alive and with a new connection per request (wrk), their p50/p99 latency, UDP
request/response pairs/s (bench/_fwd_clients.py), the proxy process's CPU seconds during each
test (utime+stime from /proc/PID/stat), and its RSS growth per idle TCP connection with 5,000
held open. Throughput figures also give the CPU one GB costs along the whole path (iperf3
client + server + proxy, softirq work included in whichever process it ran in) and the ratio
DNAT/edgeproxy of that cost: on CPU-bound cores, the ceiling of the throughput ratio.
``--repeat N`` measures every figure N times (variants interleaved, order rotated) and reports
the median run with all runs listed; ``--only`` selects figures. Ratios edgeproxy/DNAT and
edgeproxy/haproxy come from the same run, and the forwarding targets (docs/benchmarks.md) are
marked PASS/FAIL. A variant that fails to start (edgeproxy code broken) is
reported as failed with its reason; the others still run.

Everything started here is killed and every namespace deleted at exit, also on Ctrl-C, SIGTERM
or an exception.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edgeproxy.demo import topology  # noqa: E402
from edgeproxy.demo.netns import NetNS  # noqa: E402
from edgeproxy.demo.netns import netns_unavailable_reason as netns_available  # noqa: E402

NODE_POD_IP = topology.NODE_POD_SIDE  # haproxy listens here
BACKEND_IP = topology.WEB_BACKENDS["web-1"]
VIPS = {"dnat": "198.19.0.10", "edgeproxy": "198.19.0.11", "haproxy": "198.19.0.12"}
LISTEN_IP = "169.254.96.17"  # ListenAddresses().ipv4, where edgeproxy's rules DNAT to

# name, protocol, service (VIP) port, backend port, haproxy listen port on NODE_POD_IP
SERVICES = (
    ("iperf", "TCP", 5201, 5201, 15201),
    ("web", "TCP", 80, 8080, 10080),
    ("echo", "UDP", 7000, 7000, None),  # haproxy has no UDP proxy
    ("sink", "TCP", 9000, 9000, 19000),
)
# The direct variant's HTTP requests go to a second port of the same responder. The backend closes
# first (Connection: close), so it keeps each connection's tuple in TIME_WAIT for 60 s; direct and
# DNAT clients both come from the pod address, and a DNAT SYN that reused a pod port of the direct
# run met that TIME_WAIT with other TCP timestamps (PAWS), got a challenge ACK and retried after
# 1 s: kernel DNAT measured 3-4x slower than direct on new connections. Proxies dial from the node
# address, so only direct needs its own port.
DIRECT_WEB_PORT = 8081
VARIANTS = ("direct", "dnat", "edgeproxy", "haproxy")
LABELS = {"direct": "direct", "dnat": "kernel DNAT", "edgeproxy": "edgeproxy",
          "haproxy": "haproxy"}
PROXIES = ("edgeproxy", "haproxy")  # variants with a userspace process to account CPU/RSS to

WRK_CONNECTIONS = 32
UDP_SOCKETS = 16
IDLE_CONNECTIONS = 5000
CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    """A measurement or setup step failed; the message says which and why."""


# -- processes -----------------------------------------------------------------------------------


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen


class Procs:
    """Every process the benchmark starts, each in its own session so that stopping it also
    stops its children (the forked HTTP workers), by process-group id, never by name."""

    def __init__(self, log_dir: Path) -> None:
        self.procs: list[Proc] = []
        self.log_dir = log_dir

    def start(self, name: str, ns: NetNS, argv: list[str], **kwargs) -> subprocess.Popen:
        kwargs.setdefault("stdout", subprocess.PIPE)
        if "stderr" not in kwargs:
            # A file, not a pipe: a chatty process must never block on a full pipe mid-test.
            log = self.log_dir / (re.sub(r"[^\w.-]+", "_", name) + ".log")
            kwargs["stderr"] = open(log, "a")
        kwargs.setdefault("text", True)
        popen = ns.popen(argv, start_new_session=True, cwd=str(REPO), **kwargs)
        popen.log_path = getattr(kwargs["stderr"], "name", None)  # type: ignore[attr-defined]
        if hasattr(kwargs["stderr"], "close"):
            kwargs["stderr"].close()  # the child has its own copy
        self.procs.append(Proc(name, popen))
        return popen

    @staticmethod
    def stop(popen: subprocess.Popen, timeout: float = 3.0) -> None:
        if popen.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(popen.pid, signal.SIGTERM)
            try:
                popen.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        # The group may outlive its leader (forked workers).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(timeout)
        for stream in (popen.stdin, popen.stdout, popen.stderr):
            if stream:
                with contextlib.suppress(OSError):
                    stream.close()

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            self.stop(proc.popen)
        self.procs.clear()


def launch_haproxy(procs: Procs, ns: NetNS, cfg: Path, text: str, verbose: bool,
                   label: str = "haproxy") -> subprocess.Popen:
    """Write haproxy's configuration and start it in ``ns``; BenchError if it is missing."""
    if not shutil.which("haproxy"):
        raise BenchError("haproxy is not installed")
    cfg.write_text(text)
    if verbose:
        print(f"# {cfg}\n{text}")
    return procs.start(label, ns, ["haproxy", "-f", str(cfg)])


def launch_edgeproxy_driver(procs: Procs, ns: NetNS, spec: dict, spec_path: Path,
                            label: str = "edgeproxy") -> tuple[subprocess.Popen, dict]:
    """Start bench/_edgeproxy_node.py in ``ns`` on ``spec`` and read its one-line answer
    (``{"ok": true, "pid": ...}`` or ``{"ok": false, "error": ...}``); BenchError when it
    gives none within 30 s. Its stdin is a pipe: the driver exits when it closes."""
    spec_path.write_text(json.dumps(spec))
    popen = procs.start(label, ns, [sys.executable, str(REPO / "bench" / "_edgeproxy_node.py"),
                                    str(spec_path)], stdin=subprocess.PIPE)
    try:
        return popen, json.loads(wait_line(popen, "edgeproxy driver", 30))
    except ValueError as exc:
        raise BenchError(f"edgeproxy driver: unreadable answer: {exc}") from None


def wait_listening(ns: NetNS, host: str, port: int, what: str, timeout: float = 10) -> None:
    """Until something in ``ns`` listens on TCP ``host:port``; BenchError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ns.run(["ss", "-Hltn", "src", f"{host}:{port}"], check=False).stdout.strip():
            return
        time.sleep(0.1)
    raise BenchError(f"{what} not listening on {host}:{port} after {timeout:.0f} s")

def wait_line(popen: subprocess.Popen, what: str, timeout: float) -> str:
    """The first stdout line of a helper (its readiness / result protocol), bounded in time."""
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(popen.stdout, selectors.EVENT_READ)
    try:
        if not sel.select(timeout):
            raise BenchError(f"{what}: no answer within {timeout:.0f} s")
    finally:
        sel.close()
    line = popen.stdout.readline()
    if not line:
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(2)
        err = ""
        log = getattr(popen, "log_path", None)
        if isinstance(log, str) and os.path.exists(log):
            err = Path(log).read_text(errors="replace")
        raise BenchError(f"{what} exited ({popen.poll()}): {err.strip()[-500:]}")
    return line.strip()


def cpu_seconds(pid: int) -> float:
    """utime+stime of a whole process (all threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise BenchError(f"no VmRSS for pid {pid}")


# -- the benchmark -------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.topo: topology.Topology | None = None
        self.tmp = Path(tempfile.mkdtemp(prefix="ep-bench-fwd-"))
        self.procs = Procs(self.tmp)
        self.restore = "iptables-restore"
        self.pids: dict[str, int] = {}  # proxy variant -> pid to account CPU and RSS to
        self.failed: dict[str, str] = {}  # variant -> why it was not measured
        self.notes: list[str] = []
        self.info: dict = {}
        self.iperf_server: subprocess.Popen | None = None
        self.edgeproxy_popen: subprocess.Popen | None = None

    # setup ---------------------------------------------------------------------------------

    def __enter__(self) -> "Bench":
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    def cleanup(self) -> None:
        # A second Ctrl-C or SIGTERM must not cut the cleanup short and leave namespaces behind.
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            with contextlib.suppress(ValueError):  # not the main thread
                signal.signal(sig, signal.SIG_IGN)
        if self.edgeproxy_popen is not None and self.edgeproxy_popen.stdin:
            with contextlib.suppress(OSError):
                self.edgeproxy_popen.stdin.close()
        self.procs.stop_all()
        if self.topo is not None:
            self.topo.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def log(self, msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    def topology(self) -> None:
        self.topo = topology.Topology("epbf", servers=False)
        self.topo.start()
        self.pod, self.node, self.backend = self.topo.pod, self.topo.node, self.topo.backends
        # The node has no default route (an offline edge node). Host-path clients of the dnat and
        # haproxy VIPs need some route for connect() before nat OUTPUT runs; edgeproxy adds its
        # own through ProxyServer.sync_routes, which is part of what is measured.
        for variant in ("dnat", "haproxy"):
            self.node.run(["ip", "route", "add", f"{VIPS[variant]}/32", "dev",
                           topology.NODE_BACKEND_IF])
        # New-connection runs make ~10^5 flows; conntrack entries in TIME_WAIT would otherwise
        # sit for 120 s in a table shared (nf_conntrack_max) with every namespace on the host.
        # This sysctl is per namespace: only the node's own table is affected.
        self.node.run(["sysctl", "-qw", "net.netfilter.nf_conntrack_tcp_timeout_time_wait=5"],
                      check=False)

    def start_backends(self) -> None:
        py = sys.executable
        helper = str(REPO / "bench" / "_fwd_servers.py")
        for mode, port in (("udp-echo", 7000), ("sink", 9000)):
            popen = self.procs.start(f"backend {mode}", self.backend,
                                     [py, helper, mode, BACKEND_IP, str(port)])
            wait_line(popen, f"backend {mode}", 15)
        self.start_iperf_server()
        if shutil.which("haproxy"):
            cfg = self.tmp / "backend-http.cfg"
            cfg.write_text(textwrap.dedent(f"""\
                # Static HTTP backend: haproxy answers from memory (C, default threads), so the
                # backend is never what limits a proxied variant.
                global
                    maxconn 5000
                defaults
                    mode http
                    timeout client 30s
                    timeout http-request 5s
                    timeout http-keep-alive 30s
                    maxconn 5000
                frontend web
                    bind {BACKEND_IP}:8080
                    bind {BACKEND_IP}:{DIRECT_WEB_PORT}
                    http-request return status 200 content-type text/plain string ok
                """))
            popen = self.procs.start("backend http (haproxy)", self.backend,
                                     ["haproxy", "-f", str(cfg)])
            self.info["http_backend"] = "haproxy http-request return"
        else:
            for port in (8080, DIRECT_WEB_PORT):
                popen = self.procs.start(f"backend http {port}", self.backend,
                                         [py, helper, "http", BACKEND_IP, str(port), "2"])
                wait_line(popen, "backend http", 15)
            self.info["http_backend"] = "python epoll responder (2 SO_REUSEPORT workers)"
        wait_listening(self.backend, BACKEND_IP, 8080, "HTTP backend")

    def start_iperf_server(self) -> None:
        if self.iperf_server is not None:
            Procs.stop(self.iperf_server)
        self.iperf_server = self.procs.start(
            "iperf3 server", self.backend,
            ["iperf3", "-s", "-B", BACKEND_IP, "-p", "5201", "--idle-timeout", "30"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_listening(self.backend, BACKEND_IP, 5201, "iperf3 server")

    def install_dnat(self) -> None:
        """kube-proxy iptables mode's chain shape (services -> svc -> sep -> DNAT), plus the
        haproxy variant's VIP DNAT to its node address."""
        lines = ["*nat", ":KUBE-SERVICES - [0:0]", ":BENCH-HAPROXY - [0:0]"]
        for name, proto, port, be_port, hap_port in SERVICES:
            p = proto.lower()
            svc, sep = f"KUBE-SVC-BENCH-{name.upper()}", f"KUBE-SEP-BENCH-{name.upper()}"
            lines += [f":{svc} - [0:0]", f":{sep} - [0:0]",
                      f"-A KUBE-SERVICES -d {VIPS['dnat']}/32 -p {p} -m comment --comment "
                      f"\"bench/{name} cluster IP\" -m {p} --dport {port} -j {svc}",
                      f"-A {svc} -m comment --comment bench/{name} -j {sep}",
                      f"-A {sep} -p {p} -m {p} -j DNAT --to-destination {BACKEND_IP}:{be_port}"]
            if hap_port:
                lines.append(f"-A BENCH-HAPROXY -d {VIPS['haproxy']}/32 -p {p} -m {p} --dport "
                             f"{port} -j DNAT --to-destination {NODE_POD_IP}:{hap_port}")
        for chain in ("PREROUTING", "OUTPUT"):
            lines += [f"-A {chain} -m comment --comment \"kubernetes service portals\" "
                      "-j KUBE-SERVICES", f"-A {chain} -j BENCH-HAPROXY"]
        lines.append("COMMIT")
        text = "\n".join(lines) + "\n"
        result = self.node.run([self.restore, "--noflush"], input=text, check=False)
        if result.returncode != 0:
            raise BenchError(f"{self.restore} (dnat rules) failed: {result.stderr.strip()}")
        if self.args.verbose:
            print(f"# node nat rules for dnat and haproxy variants\n{text}")

    def haproxy_maxconn(self) -> int:
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        if hard == resource.RLIM_INFINITY:
            hard = 1 << 20
        return max(self.args.idle_connections + 100, min(40000, (hard - 200) // 2))

    def haproxy_config(self) -> str:
        threads = self.args.haproxy_threads
        lines = [
            "# haproxy variant: plain tcp mode, no splicing (haproxy splices only with",
            "# option splice-auto/-request/-response), nbthread as chosen by the benchmark.",
            "global",
            f"    nbthread {threads}",
            # Two sockets per connection must fit under RLIMIT_NOFILE's hard limit (often 20000
            # in containers, which root cannot raise without CAP_SYS_RESOURCE).
            f"    maxconn {self.haproxy_maxconn()}",
            "defaults",
            "    mode tcp",
            "    timeout connect 2s",
            "    timeout client 1h",
            "    timeout server 1h",
            f"    maxconn {self.haproxy_maxconn()}",
        ]
        for name, _proto, _port, be_port, hap_port in SERVICES:
            if hap_port:
                lines += [f"listen {name}", f"    bind {NODE_POD_IP}:{hap_port}",
                          f"    server {name}1 {BACKEND_IP}:{be_port}"]
        return "\n".join(lines) + "\n"

    def start_haproxy(self) -> None:
        try:
            popen = launch_haproxy(self.procs, self.node, self.tmp / "haproxy-variant.cfg",
                                   self.haproxy_config(), self.args.verbose, "haproxy variant")
            wait_listening(self.node, NODE_POD_IP, 10080, "haproxy variant")
        except BenchError as exc:
            self.failed["haproxy"] = str(exc)
            return
        self.pids["haproxy"] = popen.pid

    def start_edgeproxy(self) -> None:
        spec = {
            "state_dir": str(self.tmp / "edgeproxy-state"),
            "iptables_restore": self.restore,
            "services": [{"name": name, "protocol": proto, "vip": VIPS["edgeproxy"],
                          "port": port, "endpoints": [[BACKEND_IP, be_port]]}
                         for name, proto, port, be_port, _ in SERVICES],
        }
        try:
            self.edgeproxy_popen, answer = launch_edgeproxy_driver(
                self.procs, self.node, spec, self.tmp / "edgeproxy-spec.json",
                "edgeproxy variant")
        except BenchError as exc:
            self.failed["edgeproxy"] = str(exc)
            return
        if not answer.get("ok"):
            self.failed["edgeproxy"] = answer.get("error", "driver failed")
            if self.args.verbose:
                print(answer.get("traceback", ""), file=sys.stderr)
            return
        self.pids["edgeproxy"] = answer["pid"]
        self.info["edgeproxy"] = {k: answer[k] for k in ("splice", "routes", "proxy_ports")}

    def target(self, variant: str, service: str) -> tuple[str, int]:
        if variant == "direct" and service == "web":
            return (BACKEND_IP, DIRECT_WEB_PORT)
        for name, _proto, port, be_port, _hap in SERVICES:
            if name == service:
                return (BACKEND_IP, be_port) if variant == "direct" else (VIPS[variant], port)
        raise KeyError(service)

    def preflight(self) -> None:
        """One HTTP request per variant; a variant that cannot serve it is not measured."""
        for variant in VARIANTS:
            if variant in self.failed:
                continue
            host, port = self.target(variant, "web")
            result = self.pod.run(["curl", "-sS", "-m", "5", f"http://{host}:{port}/"],
                                  check=False)
            if result.returncode != 0 or result.stdout.strip() != "ok":
                self.failed[variant] = (f"preflight HTTP request to {host}:{port} failed: "
                                        f"{(result.stderr or result.stdout).strip()[:300]}")

    # measurements ---------------------------------------------------------------------------

    def measure(self, variant: str, fn: Callable[[], dict]) -> dict:
        """Run one test, adding the proxy process's CPU seconds spent during it."""
        if variant in self.failed:
            return {"error": f"not run: {self.failed[variant]}"}
        pid = self.pids.get(variant)
        if pid is not None and not Path(f"/proc/{pid}").exists():
            self.failed[variant] = "proxy process died"
            return {"error": "proxy process died"}
        self.reset_state()
        cpu0 = cpu_seconds(pid) if pid else None
        try:
            result = fn()
        except BenchError as exc:
            return {"error": str(exc)}
        except subprocess.TimeoutExpired as exc:
            return {"error": f"timed out: {' '.join(map(str, exc.cmd))[:200]}"}
        except (OSError, ValueError, KeyError) as exc:  # odd output or a vanished process
            return {"error": f"{type(exc).__name__}: {exc}"}
        if pid:
            with contextlib.suppress(OSError):
                result["proxy_cpu_s"] = round(cpu_seconds(pid) - cpu0, 3)
        return result

    def reset_state(self) -> None:
        """Start every test from the same state: an empty conntrack table in the node (one
        test's leftover flows cannot change the next test's NAT decisions or table size), and
        no TCP socket in TIME_WAIT in any of the bench's namespaces (``ss -K``). A new-
        connection test leaves tens of thousands of them for 60 s; where they sit on the
        client's side (a proxy that passes the server's FIN on late makes the client close
        first), the client's connect() has to search past them for a free port and the next
        round of that variant, or the variant after it, ran at a tenth of its speed."""
        if shutil.which("conntrack"):
            self.node.run(["conntrack", "-F"], check=False)
        for ns in (self.pod, self.node, self.backend):
            ns.run(["ss", "-K", "-tan", "state", "time-wait"], check=False)

    def iperf(self, ns: NetNS, host: str, port: int) -> dict:
        secs = self.args.duration
        # CPU of the whole path, not only the proxy's: the iperf3 client (this process's child,
        # so its rusage) and server. Each process's system time includes the softirq work the
        # kernel did in its context (for DNAT: forwarding and the backend's receive, charged to
        # the sending client), so the sum is the CPU one GB costs end to end, and the ratio of
        # the sums bounds the throughput ratio on CPU-bound cores.
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        client0 = children.ru_utime + children.ru_stime
        server0 = cpu_seconds(self.iperf_server.pid)
        result = ns.run(["iperf3", "-c", host, "-p", str(port), "-t", str(secs), "-J",
                         "--connect-timeout", "3000"], check=False, timeout=secs + 20)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        client_cpu = children.ru_utime + children.ru_stime - client0
        server_cpu = cpu_seconds(self.iperf_server.pid) - server0
        try:
            data = json.loads(result.stdout)
        except ValueError:
            data = {"error": (result.stderr or result.stdout).strip()[:300] or "no output"}
        if "error" in data:
            self.start_iperf_server()  # a failed test can leave the server stuck "busy"
            raise BenchError(f"iperf3: {data['error']}")
        end = data["end"]
        bps = end["sum_received"]["bits_per_second"]
        return {"value": round(bps / 1e9, 3), "bytes": end["sum_received"]["bytes"],
                "retransmits": end["sum_sent"].get("retransmits"),
                "client_cpu_s": round(client_cpu, 3), "server_cpu_s": round(server_cpu, 3)}

    def wrk(self, host: str, port: int, close: bool) -> dict:
        secs = self.args.duration
        argv = ["wrk", "-t1", f"-c{WRK_CONNECTIONS}", f"-d{secs}s", "--latency",
                "--timeout", "2s"]
        if close:
            argv += ["-H", "Connection: close"]
        argv.append(f"http://{host}:{port}/")
        result = self.pod.run(argv, check=False, timeout=secs + 20)
        if result.returncode != 0:
            raise BenchError(f"wrk failed: {result.stderr.strip()[:300]}")
        figures = parse_wrk(result.stdout)
        # Who closed first: TIME_WAIT left on the client's side (its ports toward this address)
        # means the proxy passed the server's FIN on too late and the client's connect() has
        # to search past them; that, not the proxy's CPU, then limits the rate.
        waiting = self.pod.run(["ss", "-Htan", "state", "time-wait", "dst", host],
                               check=False)
        figures["client_time_wait"] = len(waiting.stdout.splitlines())
        figures["seconds"] = secs
        return figures

    def udp_rr(self, ns: NetNS, host: str, port: int) -> dict:
        secs = self.args.duration
        result = ns.run([sys.executable, str(REPO / "bench" / "_fwd_clients.py"), "udp-rr",
                         host, str(port), str(secs), str(UDP_SOCKETS)], check=False,
                        timeout=secs + 20, cwd=str(REPO))
        if result.returncode != 0:
            raise BenchError(f"udp client failed: {result.stderr.strip()[-300:]}")
        data = json.loads(result.stdout)
        if data["pairs"] == 0:
            raise BenchError(f"no UDP reply at all ({data['lost']} requests lost)")
        return {"value": data["rate"], "pairs": data["pairs"], "lost": data["lost"]}

    def idle(self, variant: str) -> dict:
        pid = self.pids[variant]
        host, port = self.target(variant, "sink")
        count = self.args.idle_connections
        time.sleep(0.5)
        before = rss_kib(pid)
        client = self.procs.start(
            f"idle client ({variant})", self.pod,
            [sys.executable, str(REPO / "bench" / "_fwd_clients.py"), "idle", host, str(port),
             str(count)], stdin=subprocess.PIPE)
        try:
            data = json.loads(wait_line(client, "idle client", 120))
            if data["established"] < count:
                raise BenchError(f"only {data['established']} of {count} connections "
                                 f"established: {data['first_error']}")
            time.sleep(1.0)  # let the proxy settle (buffers returned, greenlets parked)
            after = rss_kib(pid)
        finally:
            with contextlib.suppress(OSError):
                client.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                client.wait(30)
            Procs.stop(client)
        return {"value": round((after - before) / count, 2), "rss_before_kib": before,
                "rss_after_kib": after, "connect_seconds": data["seconds"]}

    def run(self) -> dict:
        figs: dict[str, dict[str, dict]] = {f.key: {} for f in FIGURES}
        for fig in FIGURES:
            if self.args.only and fig.key not in self.args.only:
                continue
            self.log(f"{fig.title}")
            variants = [v for v in fig.variants if not (
                fig.key == "idle_rss" and v not in self.pids and v not in self.failed)]
            # The idle-connection figure holds 5,000 connections: once is enough.
            rounds = 1 if fig.key == "idle_rss" else self.args.repeat
            runs: dict[str, list[dict]] = {v: [] for v in variants}
            for rnd in range(rounds):
                # Rotate the order each round, so that no variant always runs right after
                # another one's heavy test (or always first, on a cold cache).
                shift = rnd % len(variants)
                for variant in variants[shift:] + variants[:shift]:
                    r = self.measure(variant, lambda: fig.run(self, variant))
                    runs[variant].append(r)
                    shown = r.get("value", r.get("error"))
                    self.log(f"  {variant:10s} {shown}")
            for variant in variants:
                figs[fig.key][variant] = median_run(runs[variant])
        return figs


def median_run(runs: list[dict]) -> dict:
    """The run with the median value (its own CPU and latency figures stay consistent with
    it), with every run's value kept in ``runs``; an error only when every run failed."""
    good = sorted((r for r in runs if "value" in r), key=lambda r: r["value"])
    if not good:
        return runs[-1]
    result = dict(good[(len(good) - 1) // 2])
    if len(runs) > 1:
        result["runs"] = [r.get("value") for r in runs]
    return result


# -- figures -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Figure:
    key: str
    title: str
    unit: str
    run: Callable[[Bench, str], dict]
    variants: tuple[str, ...] = VARIANTS
    higher_is_better: bool = True
    cpu_unit: str = ""  # how proxy CPU is normalised: per GB, per 1k requests...
    cpu_per: Callable[[dict], float] | None = None


def _tput(bench: Bench, variant: str, host_path: bool = False) -> dict:
    host, port = bench.target(variant, "iperf")
    return bench.iperf(bench.node if host_path else bench.pod, host, port)


def _rps(bench: Bench, variant: str, close: bool) -> dict:
    host, port = bench.target(variant, "web")
    return bench.wrk(host, port, close)


def _udp(bench: Bench, variant: str, host_path: bool = False) -> dict:
    host, port = bench.target(variant, "echo")
    return bench.udp_rr(bench.node if host_path else bench.pod, host, port)


def _per_thousand_ms(count: float) -> float:
    """The divisor that turns proxy CPU seconds into ms per 1,000 (= seconds per million)."""
    return count / 1e6


def _requests(r: dict) -> float:
    return _per_thousand_ms(r["requests"])


FIGURES = (
    Figure("throughput", "Single-stream TCP throughput, pod -> service (iperf3)", "Gbit/s",
           lambda b, v: _tput(b, v), cpu_unit="s/GB", cpu_per=lambda r: r["bytes"] / 1e9),
    Figure("throughput_host", "Single-stream TCP throughput, host path: node -> service "
           "(nat OUTPUT)", "Gbit/s", lambda b, v: _tput(b, v, True),
           cpu_unit="s/GB", cpu_per=lambda r: r["bytes"] / 1e9),
    Figure("rps_keepalive", f"HTTP requests/s, keep-alive (wrk -t1 -c{WRK_CONNECTIONS})",
           "req/s", lambda b, v: _rps(b, v, False), cpu_unit="ms/1k req", cpu_per=_requests),
    Figure("rps_close", f"HTTP requests/s, new connection per request (wrk -t1 "
           f"-c{WRK_CONNECTIONS}, Connection: close)", "req/s", lambda b, v: _rps(b, v, True),
           cpu_unit="ms/1k req", cpu_per=_requests),
    Figure("udp_rr", f"UDP request/response pairs/s, pod -> service ({UDP_SOCKETS} sockets, "
           "64 B)", "pairs/s", lambda b, v: _udp(b, v), variants=("direct", "dnat", "edgeproxy"),
           cpu_unit="ms/1k pairs", cpu_per=lambda r: _per_thousand_ms(r["pairs"])),
    Figure("udp_rr_host", f"UDP request/response pairs/s, host path ({UDP_SOCKETS} sockets)",
           "pairs/s", lambda b, v: _udp(b, v, True), variants=("direct", "dnat", "edgeproxy"),
           cpu_unit="ms/1k pairs", cpu_per=lambda r: _per_thousand_ms(r["pairs"])),
    Figure("idle_rss", f"Proxy RSS growth per idle TCP connection (KiB, "
           f"{IDLE_CONNECTIONS} held)", "KiB/conn", lambda b, v: b.idle(v),
           variants=PROXIES, higher_is_better=False),
)

# (figure, baseline variant or None for an absolute bound, operator, bound): the forwarding
# targets of docs/benchmarks.md.
TARGETS = (
    ("throughput", "dnat", ">=", 0.8),
    ("throughput", "haproxy", ">", 1.0),
    ("rps_keepalive", "haproxy", ">=", 0.7),
    ("rps_close", "haproxy", ">=", 0.5),
    ("udp_rr", "dnat", ">=", 0.35),
    ("idle_rss", None, "<", 10.0),
)

_DURATION = re.compile(r"([\d.]+)(us|ms|s|m)$")


def _ms(text: str) -> float:
    match = _DURATION.match(text)
    if not match:
        raise BenchError(f"cannot parse wrk duration {text!r}")
    value, unit = float(match.group(1)), match.group(2)
    return value * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]


def parse_wrk(out: str) -> dict:
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    if not rps or not total:
        raise BenchError(f"unexpected wrk output: {out.strip()[-300:]}")
    result = {"value": float(rps.group(1)), "requests": int(total.group(1))}
    for pct in ("50", "99"):
        match = re.search(rf"^\s+{pct}%\s+(\S+)", out, re.M)
        if match:
            result[f"p{pct}_ms"] = round(_ms(match.group(1)), 3)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                       out)
    if errors:
        result["socket_errors"] = dict(zip(("connect", "read", "write", "timeout"),
                                           map(int, errors.groups())))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        result["non_2xx"] = int(non2xx.group(1))
    return result


# -- report --------------------------------------------------------------------------------------


def ratio(figs: dict, key: str, variant: str, base: str) -> float | None:
    a, b = figs.get(key, {}).get(variant, {}), figs.get(key, {}).get(base, {})
    if "value" in a and "value" in b and b["value"]:
        return a["value"] / b["value"]
    return None


def evaluate_targets(figs: dict, only: frozenset[str] = frozenset()) -> list[dict]:
    out = []
    for key, base, op, bound in TARGETS:
        if only and key not in only:
            continue  # not selected with --only: neither passed nor failed
        value = (figs.get(key, {}).get("edgeproxy", {}).get("value") if base is None
                 else ratio(figs, key, "edgeproxy", base))
        what = ("edgeproxy" if base is None else f"edgeproxy/{LABELS[base]}")
        if value is None:
            # A target of a variant that could not be measured is failed, not skipped.
            verdict = "FAIL (not measured)"
        else:
            verdict = "PASS" if {">=": value >= bound, ">": value > bound,
                                 "<": value < bound}[op] else "FAIL"
        out.append({"figure": key, "what": what, "value": value, "op": op, "bound": bound,
                    "verdict": verdict})
    return out


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.2f}" if value >= 1 else f"{value:.3f}"


def path_cpu_per_gb(r: dict) -> float | None:
    """CPU seconds per GB of iperf3 client + server + proxy (throughput figures only)."""
    if "client_cpu_s" not in r or not r.get("bytes"):
        return None
    return (r["client_cpu_s"] + r["server_cpu_s"] + (r.get("proxy_cpu_s") or 0.0)) / (
        r["bytes"] / 1e9)


def render(figs: dict, targets: list[dict], bench: Bench) -> str:
    lines: list[str] = []
    for fig in FIGURES:
        rows = figs.get(fig.key, {})
        if not rows:
            continue
        lines += ["", fig.title]
        header = f"  {'variant':<12} {fig.unit:>12}"
        if fig.cpu_per:
            header += f" {'proxy CPU s':>12} {'CPU ' + fig.cpu_unit:>16}"
        if fig.key.startswith("throughput"):
            header += f" {'path CPU s/GB':>16}"
        lines.append(header)
        for variant in fig.variants:
            r = rows.get(variant)
            if r is None:
                continue
            if "error" in r:
                lines.append(f"  {LABELS[variant]:<12} FAILED: {r['error'][:160]}")
                continue
            line = f"  {LABELS[variant]:<12} {_fmt(r['value']):>12}"
            if fig.cpu_per:
                cpu = r.get("proxy_cpu_s")
                per = cpu / fig.cpu_per(r) if cpu is not None and fig.cpu_per(r) else None
                line += f" {_fmt(cpu):>12} {_fmt(per):>16}"
            if fig.key.startswith("throughput"):
                line += f" {_fmt(path_cpu_per_gb(r)):>16}"
            extra = []
            if r.get("lost"):
                extra.append(f"{r['lost']} lost")
            errs = {k: v for k, v in (r.get("socket_errors") or {}).items() if v}
            if errs:
                extra.append("socket errors " + ", ".join(f"{k} {v}" for k, v in errs.items()))
            if r.get("non_2xx"):
                extra.append(f"{r['non_2xx']} non-2xx")
            if r.get("proxy_cpu_s") is not None and r.get("seconds"):
                extra.append(f"proxy busy {100 * r['proxy_cpu_s'] / r['seconds']:.0f}% of a core")
            if "client_time_wait" in r:
                extra.append(f"client TIME_WAIT {r['client_time_wait']:,}")
            if r.get("runs"):
                extra.append("runs " + " ".join(_fmt(v) for v in r["runs"]))
            if extra:
                line += "   (" + "; ".join(extra) + ")"
            lines.append(line)
        for base in ("dnat", "haproxy"):
            if fig.key == "idle_rss" and base == "dnat":
                continue
            r = ratio(figs, fig.key, "edgeproxy", base)
            if r is not None:
                lines.append(f"  ratio edgeproxy/{LABELS[base]:<11} {r:>6.2f}"
                             + ("" if fig.higher_is_better else "   (lower is better)"))
        per_gb = {v: path_cpu_per_gb(rows.get(v, {})) for v in ("dnat", "edgeproxy")}
        if per_gb["dnat"] and per_gb["edgeproxy"]:
            # Where cores are the bottleneck, throughput is at most inversely proportional to
            # the CPU a GB costs: this is the ceiling of the ratio above for this machine.
            ceiling = per_gb["dnat"] / per_gb["edgeproxy"]
            lines.append(f"  path CPU/GB kernel DNAT / edgeproxy {ceiling:>6.2f}"
                         "   (CPU-bound ceiling of the ratio)")
        for t in targets:
            if t["figure"] == fig.key:
                lines.append(f"  target {t['what']} {t['op']} {t['bound']:g}: "
                             f"{_fmt(t['value'])} {t['verdict']}")
    # Latency, from the two wrk runs.
    lat_rows = []
    for key, label in (("rps_keepalive", "keep-alive"), ("rps_close", "new conn")):
        for variant in VARIANTS:
            r = figs.get(key, {}).get(variant, {})
            if "p50_ms" in r:
                lat_rows.append(f"  {LABELS[variant]:<12} {label:<11} {r['p50_ms']:>9.3f} "
                                f"{r.get('p99_ms', float('nan')):>9.3f}")
    if lat_rows:
        lines += ["", f"HTTP latency under load (wrk --latency, {WRK_CONNECTIONS} connections)",
                  f"  {'variant':<12} {'run':<11} {'p50 ms':>9} {'p99 ms':>9}", *lat_rows]
        for key, label in (("rps_keepalive", "keep-alive"), ("rps_close", "new conn")):
            for base in ("dnat", "haproxy"):
                a = figs.get(key, {}).get("edgeproxy", {})
                b = figs.get(key, {}).get(base, {})
                if a.get("p99_ms") and b.get("p99_ms"):
                    lines.append(f"  ratio edgeproxy/{LABELS[base]} {label}: p50 "
                                 f"{a['p50_ms'] / b['p50_ms']:.2f}, p99 "
                                 f"{a['p99_ms'] / b['p99_ms']:.2f} (lower is better)")
    lines += ["", "Targets"]
    for t in targets:
        lines.append(f"  {t['figure']:<14} {t['what']:<24} {t['op']:>2} {t['bound']:<5g} "
                     f"{_fmt(t['value']):>8}  {t['verdict']}")
    if bench.failed:
        lines += ["", "Variants not measured"]
        lines += [f"  {LABELS[v]}: {why}" for v, why in bench.failed.items()]
    return "\n".join(lines)


# -- main ----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="edgeproxy forwarding benchmark: direct, kernel DNAT, edgeproxy and "
                    "haproxy in private network namespaces, ratios from the same run.")
    parser.add_argument("--quick", action="store_true",
                        help="2-second tests (whole run under 2 minutes), for tuning loops")
    parser.add_argument("--duration", type=int, default=None,
                        help="seconds per test (default 6, --quick 2)")
    parser.add_argument("--idle-connections", type=int, default=IDLE_CONNECTIONS,
                        help="idle TCP connections held for the memory figure (default 5000)")
    parser.add_argument("--haproxy-threads", type=int, default=1,
                        help="haproxy nbthread (default 1: edgeproxy is one gevent hub)")
    parser.add_argument("--json", type=Path, help="also write every raw figure here")
    parser.add_argument("--repeat", type=int, default=1,
                        help="measure each figure N times, variants interleaved in a rotating "
                             "order, and report the median run (default 1; the idle-memory "
                             "figure is measured once)")
    parser.add_argument("--only", default="",
                        help="comma-separated figures to measure (default all): "
                             + ", ".join(f.key for f in FIGURES))
    parser.add_argument("--verbose", action="store_true",
                        help="print the haproxy config and the rules installed")
    args = parser.parse_args(argv)
    args.only = frozenset(filter(None, (k.strip() for k in args.only.split(","))))
    unknown = args.only - {f.key for f in FIGURES}
    if unknown:
        parser.error(f"--only: unknown figure(s) {', '.join(sorted(unknown))}; choose from "
                     + ", ".join(f.key for f in FIGURES))
    if args.duration is None:
        args.duration = 2 if args.quick else 6
    if args.duration < 1 or not 1 <= args.idle_connections <= 20000:
        parser.error("--duration must be >= 1 and --idle-connections in 1..20000")
    if not 1 <= args.repeat <= 20:
        parser.error("--repeat must be in 1..20")
    return args


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    reason = netns_available()
    missing = [t for t in ("iperf3", "wrk", "curl", "ss", "iptables-restore")
               if not shutil.which(t)]
    if reason or missing:
        print(f"forwarding benchmark cannot run: {reason or 'missing ' + ', '.join(missing)}",
              file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    started = time.monotonic()
    bench = Bench(args)
    try:
        with bench:
            bench.log("building namespaces pod / node / backend")
            bench.topology()
            bench.start_backends()
            bench.install_dnat()
            bench.start_haproxy()
            bench.start_edgeproxy()
            bench.preflight()
            if bench.failed:
                for variant, why in bench.failed.items():
                    bench.log(f"variant {variant} not measured: {why}")
            figs = bench.run()
    except KeyboardInterrupt:
        print("interrupted; namespaces and processes cleaned up", file=sys.stderr)
        return 130
    except BenchError as exc:
        print(f"forwarding benchmark failed: {exc}", file=sys.stderr)
        return 1
    targets = evaluate_targets(figs, args.only)
    elapsed = time.monotonic() - started
    hap = (f"haproxy nbthread {args.haproxy_threads}, no splice"
           if "haproxy" not in bench.failed else "haproxy not measured")
    ep = bench.info.get("edgeproxy")
    ep_text = (f"edgeproxy rules via render_rules, splice {'on' if ep['splice'] else 'off'}"
               if ep else "edgeproxy not measured")
    print(f"edgeproxy forwarding benchmark: {args.duration} s per test, "
          f"{os.cpu_count()} CPUs shared by client, proxy and backend; {hap}; {ep_text}; "
          f"HTTP backend: {bench.info.get('http_backend')}; run took {elapsed:.0f} s")
    print(render(figs, targets, bench))
    if args.json:
        args.json.write_text(json.dumps({
            "duration": args.duration, "idle_connections": args.idle_connections,
            "haproxy_threads": args.haproxy_threads, "info": bench.info,
            "repeat": args.repeat, "only": sorted(args.only),
            "figures": figs, "targets": targets, "failed": bench.failed,
            "elapsed_s": round(elapsed, 1)}, indent=2, sort_keys=True))
    # The table is printed either way; the exit status tells a script that edgeproxy itself
    # could not be measured (targets PASS/FAIL are for people, not an exit status).
    return 1 if "edgeproxy" in bench.failed else 0


if __name__ == "__main__":
    sys.exit(main())
