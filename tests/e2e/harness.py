"""End-to-end harness: the real `edgeproxy run` process on a namespaced edge node.

Builds on `edgeproxy.demo` (topology, backends, stand-in kube-proxy, daemon subprocess) and
adds what the e2e tests need on top:

- `ClientLoop`: a thread inside the pod namespace that keeps requesting a set of services
  through their cluster IPs and records every failure with its time and error, so a test can
  assert "no request to an unchanged service failed while X happened".
- Mirrors: the three ways a mirror updates a directory: `AtomicRenameMirror`
  (rsync/kubectl: temp file + rename), `SymlinkSwapMirror` (git-sync: the root is a symlink to
  a versioned copy, swapped atomically; or the ConfigMap-volume layout where `..data` is swapped
  and the files are symlinks through it), `InPlaceMirror` (truncate and write in chunks).
- `rule_lines()`: edgeproxy's rules in the node's nat and filter tables (for "one copy of each
  rule" and "rules gone").
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from edgeproxy.demo.clients import http_get, wait_until
from edgeproxy.demo.kube_proxy import Iptables
from edgeproxy.demo.netns import NetNS
from edgeproxy.demo.topology import DNS_RECORD, DNS_VIP, Topology, WEB_VIP
from tests.support.node import Daemon, metric_value

EXAMPLES = Path(__file__).resolve().parents[2] / "config" / "examples"
# Fast enough for tests, slow enough not to load two shared CPUs.
DAEMON_ARGS = ("--iptables-sync-period", "300ms", "--drain-grace", "2s", "--udp-timeout", "5s")

API_VIP = "198.19.0.40"


def api_manifest(backend: str, port: int = 8080, vip: str = API_VIP, name: str = "api") -> str:
    """A Service + Endpoints pair; `backend` is one of topology.WEB_BACKENDS' addresses."""
    return f"""\
apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: default
spec:
  clusterIP: {vip}
  ports:
    - port: 80
      protocol: TCP
      targetPort: {port}
---
apiVersion: v1
kind: Endpoints
metadata:
  name: {name}
  namespace: default
subsets:
  - addresses:
      - ip: {backend}
    ports:
      - port: {port}
        protocol: TCP
"""


BROKEN_MANIFEST = "apiVersion: v1\nkind: Service\nmetadata: {name: api, namespace: default\n"


# --------------------------------------------------------------------------- client loop


def dns_query(ns_sock_factory: Callable[[], socket.socket], server: str, name: str,
              timeout: float) -> list[str]:
    """One A query over UDP; the answer's IPv4 addresses (raises OSError on no/bad answer)."""
    qid = random.randrange(65536)
    qname = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    packet = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + qname + struct.pack("!HH", 1, 1)
    with ns_sock_factory() as sock:
        sock.settimeout(timeout)
        sock.sendto(packet, (server, 53))
        data, _ = sock.recvfrom(4096)
    rid, flags, _, ancount, _, _ = struct.unpack("!HHHHHH", data[:12])
    if rid != qid or flags & 0x000F or ancount == 0:
        raise OSError(f"bad DNS answer id={rid} flags={flags:#x} answers={ancount}")
    # Answers follow the echoed question; A records end with 4 bytes of address.
    return [socket.inet_ntoa(data[-4:])]


@dataclass
class Outcome:
    ok: int = 0
    failures: list[tuple[float, str]] = field(default_factory=list)


class ClientLoop:
    """Keeps requesting `targets` (name -> probe) from inside `ns` until stopped.

    A probe is a function run in the loop thread (which lives in the namespace) that raises
    OSError (or returns False) on failure. Probes run round-robin, ~every `interval` seconds.
    """

    def __init__(self, ns: NetNS, targets: dict[str, Callable[[], object]],
                 interval: float = 0.02) -> None:
        self.ns = ns
        self.targets = targets
        self.interval = interval
        self.outcomes: dict[str, Outcome] = {name: Outcome() for name in targets}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="e2e-client", daemon=True)

    def start(self) -> "ClientLoop":
        self._thread.start()
        return self

    def _run(self) -> None:
        self.ns.enter_for_good()  # this thread only; its sockets belong to the pod namespace
        while not self._stop.is_set():
            for name, probe in self.targets.items():
                try:
                    result = probe()
                    good, error = result is not False, "probe returned False"
                except OSError as exc:
                    good, error = False, f"{type(exc).__name__}: {exc}"
                with self._lock:
                    if good:
                        self.outcomes[name].ok += 1
                    else:
                        self.outcomes[name].failures.append((time.monotonic(), error))
            self._stop.wait(self.interval)

    def stop(self) -> dict[str, Outcome]:
        self._stop.set()
        self._thread.join(timeout=10)
        return self.outcomes

    def snapshot(self) -> dict[str, tuple[int, int]]:
        with self._lock:
            return {n: (o.ok, len(o.failures)) for n, o in self.outcomes.items()}

    def wait_for_requests(self, count: int = 3, timeout: float = 5.0) -> None:
        """Block until every target got `count` more attempts (so a step really overlapped
        with traffic)."""
        start = self.snapshot()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            now = self.snapshot()
            if all(sum(now[n]) - sum(start[n]) >= count for n in now):
                return
            time.sleep(0.02)

    def assert_no_failures(self, names: list[str] | None = None) -> None:
        with self._lock:
            bad = {n: o.failures[:5] for n, o in self.outcomes.items()
                   if (names is None or n in names) and o.failures}
            oks = {n: o.ok for n, o in self.outcomes.items()}
        assert not bad, f"requests failed: {bad} (successes: {oks})"
        assert all(oks[n] > 0 for n in (names or oks)), f"no successful request: {oks}"


def _raw_http(host: str, port: int, timeout: float) -> str:
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(f"GET / HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    if b" 200 " not in head.split(b"\r\n", 1)[0]:
        raise OSError(f"HTTP answer {head[:40]!r}")
    return body.decode().strip()


def web_probe(timeout: float = 1.0) -> Callable[[], object]:
    """Probe for the unchanged web service (must be answered by web-1 or web-2)."""
    def probe() -> bool:
        return _raw_http(WEB_VIP, 80, timeout) in ("web-1", "web-2")
    return probe


def dns_probe(timeout: float = 1.0) -> Callable[[], object]:
    name, addr = DNS_RECORD

    def probe() -> bool:
        def udp() -> socket.socket:
            return socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        return dns_query(udp, DNS_VIP, name, timeout) == [addr]
    return probe


def standard_client(topo: Topology) -> ClientLoop:
    """Client loop over the services a test leaves unchanged: web (TCP) and DNS (UDP)."""
    return ClientLoop(topo.pod, {"web": web_probe(), "dns": dns_probe()})


def api_answer(topo: Topology, vip: str = API_VIP) -> str | None:
    try:
        return http_get(topo.pod, vip, timeout=0.5).strip()
    except OSError:
        return None


def wait_api(topo: Topology, expected: str | None, timeout: float = 8.0,
             vip: str = API_VIP) -> float:
    """Seconds until the api service answers `expected` (None: stops answering)."""
    took = wait_until(lambda: api_answer(topo, vip) == expected, timeout, interval=0.03)
    assert took is not None, (f"{vip} still answers {api_answer(topo, vip)!r}, "
                              f"expected {expected!r} after {timeout} s")
    return took


# --------------------------------------------------------------------------- mirrors


class Mirror:
    """A directory fed by a mirror; `root` is what the daemon's --manifests points at."""

    style = "base"

    def __init__(self, base: Path, source: Path = EXAMPLES) -> None:
        self.base = base
        self.base.mkdir(parents=True, exist_ok=True)
        os.chmod(self.base, 0o755)
        self.files: dict[str, str] = {p.name: p.read_text() for p in sorted(source.glob("*.yaml"))}
        self.root = self._publish_initial()

    def _publish_initial(self) -> Path:
        raise NotImplementedError

    def write(self, name: str, text: str) -> None:
        raise NotImplementedError

    def delete(self, name: str) -> None:
        raise NotImplementedError

    def delete_all(self) -> None:
        for name in list(self.files):
            self.delete(name)


def _write_file(path: Path, text: str) -> None:
    path.write_text(text)
    os.chmod(path, 0o644)


class AtomicRenameMirror(Mirror):
    """rsync / kubectl style: write a temp file in the same directory, then rename over."""

    style = "atomic-rename"

    def _publish_initial(self) -> Path:
        root = self.base / "manifests"
        root.mkdir()
        os.chmod(root, 0o755)
        for name, text in self.files.items():
            _write_file(root / name, text)
        return root

    def write(self, name: str, text: str) -> None:
        tmp = self.root / f".{name}.tmp{random.randrange(1 << 30)}"
        _write_file(tmp, text)
        os.rename(tmp, self.root / name)
        self.files[name] = text

    def delete(self, name: str) -> None:
        (self.root / name).unlink()
        self.files.pop(name, None)


class InPlaceMirror(AtomicRenameMirror):
    """A naive copier: truncates the file and writes it in three chunks, flushed separately,
    split mid-line (never at a document boundary), ~10 ms apart."""

    style = "in-place-chunks"

    def write(self, name: str, text: str) -> None:
        data = text.encode()
        cuts = [0, len(data) // 3 + 1, 2 * len(data) // 3 + 1, len(data)]
        path = self.root / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            for start, end in zip(cuts, cuts[1:]):
                os.write(fd, data[start:end])
                os.fsync(fd)
                time.sleep(0.01)
        finally:
            os.close(fd)
        self.files[name] = text


class SymlinkSwapMirror(Mirror):
    """git-sync style: `root` is a symlink to a versioned copy of the whole tree; every update
    writes a new copy and swaps the link atomically (symlink + rename), then removes the old."""

    style = "symlink-swap"

    def _publish_initial(self) -> Path:
        self.version = 0
        self.current: Path | None = None
        root = self.base / "manifests"
        self._publish(root)
        return root

    def _publish(self, link: Path) -> None:
        self.version += 1
        tree = self.base / f"rev-{self.version:04d}"
        tree.mkdir()
        os.chmod(tree, 0o755)
        for name, text in self.files.items():
            _write_file(tree / name, text)
        tmp_link = self.base / f".link-{self.version}"
        os.symlink(tree.name, tmp_link)
        os.rename(tmp_link, link)
        if self.current is not None:
            shutil.rmtree(self.current)
        self.current = tree

    def write(self, name: str, text: str) -> None:
        self.files[name] = text
        self._publish(self.root)

    def delete(self, name: str) -> None:
        self.files.pop(name, None)
        self._publish(self.root)

    def delete_all(self) -> None:
        self.files.clear()
        self._publish(self.root)


class ConfigMapMirror(SymlinkSwapMirror):
    """Kubernetes ConfigMap volume layout: root is a real directory holding `..data` (symlink to
    a hidden timestamped dir, swapped atomically) and one symlink per key through `..data`."""

    style = "configmap-data"

    def _publish_initial(self) -> Path:
        self.version = 0
        self.current = None
        root = self.base / "manifests"
        root.mkdir()
        os.chmod(root, 0o755)
        self.root = root
        self._publish(root)
        return root

    def _publish(self, root: Path) -> None:
        self.version += 1
        tree = root / f"..2026_11_27_00_00_{self.version:02d}.{random.randrange(10**9)}"
        tree.mkdir()
        os.chmod(tree, 0o755)
        for name, text in self.files.items():
            _write_file(tree / name, text)
        tmp_link = root / "..data_tmp"
        os.symlink(tree.name, tmp_link)
        os.rename(tmp_link, root / "..data")
        # Key links: add new ones, drop removed ones (kubelet's AtomicWriter does the same).
        for name in self.files:
            link = root / name
            if not link.is_symlink():
                os.symlink(f"..data/{name}", link)
        for entry in root.iterdir():
            if not entry.name.startswith("..") and entry.name not in self.files:
                entry.unlink()
        if self.current is not None:
            shutil.rmtree(self.current)
        self.current = tree


MIRRORS: dict[str, type[Mirror]] = {m.style: m for m in (
    AtomicRenameMirror, SymlinkSwapMirror, ConfigMapMirror, InPlaceMirror)}


# --------------------------------------------------------------------------- rules


OWN_CHAIN_PREFIXES = ("KUBE-PORTALS-", "KUBE-NODEPORT-", "EDGEPROXY-")


def rule_lines(node: NetNS, tables: tuple[str, ...] = ("nat", "filter")) -> list[str]:
    """edgeproxy's rules (in its chains or jumping to them) from `iptables-save`, prefixed with
    the table; chain definitions and counters left out."""
    lines = []
    for table in tables:
        out = node.run(["iptables-save", "-t", table]).stdout.splitlines()
        lines += [f"{table} {line}" for line in out
                  if line.startswith("-A") and any(p in line for p in OWN_CHAIN_PREFIXES)]
    return lines


def assert_rules_once(node: NetNS) -> None:
    lines = rule_lines(node)
    dupes = sorted({line for line in lines if lines.count(line) > 1})
    assert not dupes, f"duplicated rules: {dupes}"
    for chain in ("PREROUTING", "OUTPUT"):
        targets = Iptables(node).targets(chain)
        portals = [t for t in targets if t.startswith("KUBE-PORTALS")]
        assert len(portals) == 1, f"{chain} jumps: {targets}"
        if "KUBE-SERVICES" in targets:
            assert targets.index(portals[0]) < targets.index("KUBE-SERVICES"), \
                f"{chain} order: {targets}"


def proxy_ports(node: NetNS) -> dict[str, str]:
    """VIP:port/proto -> DNAT target, from the container chain (to compare across restarts)."""
    mapping = {}
    for line in rule_lines(node):
        if "nat -A KUBE-PORTALS-CONTAINER" not in line or "--to-destination" not in line:
            continue
        parts = line.split()
        vip = parts[parts.index("-d") + 1].split("/")[0]
        port = parts[parts.index("--dport") + 1]
        proto = parts[parts.index("-p") + 1]
        mapping[f"{vip}:{port}/{proto}"] = parts[parts.index("--to-destination") + 1]
    return mapping


# --------------------------------------------------------------------------- status and metrics
# Readers of `edgeproxy status -o json` and /metrics, in one place so the tests state intent.


def status_services(status: dict) -> set[str]:
    """namespace/name of every proxied service in the status document ("default/web:http" is
    the service port's kube-proxy comment; the port name is dropped here)."""
    return {entry["service"].split(":")[0] for entry in status["services"]}


def file_errors(status: dict, file_name: str) -> list[dict]:
    """Errors reported for the manifest file called `file_name` (basename)."""
    return [e for e in status["errors"] if Path(e["file"]).name == file_name]


def removal_held(status: dict) -> bool:
    """True while the mass-removal guard holds a sync back."""
    return bool(status["guard"]["held"])


def manifest_error_metric(metrics: str, file_name: str) -> float:
    """edgeproxy_manifest_errors summed over the files called `file_name`."""
    total = 0.0
    for line in metrics.splitlines():
        if line.startswith("edgeproxy_manifest_errors{") and f'/{file_name}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def guard_metric(metrics: str) -> float:
    return metric_value(metrics, "edgeproxy_mass_removal_held") or 0.0


def chain_repairs(daemon: Daemon) -> float:
    return metric_value(daemon.metrics(), "edgeproxy_chain_repairs_total") or 0.0
