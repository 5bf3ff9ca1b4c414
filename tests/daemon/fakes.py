"""Fakes of the Daemon's parts (computer, proxy, keeper) for tests that run the daemon.

They implement the Protocols of edgeproxy/daemon/core.py and views.py; test_views.py checks
that they do, so a fake cannot drift from the interface it stands in for.
"""

from dataclasses import dataclass, field

from edgeproxy.daemon.compute import Computed
from edgeproxy.forwarding.stats import EndpointReport, PortEndpointsReport, ServiceStats
from edgeproxy.model import (DesiredState, Endpoint, FilterMode, Protocol, ServicePort,
                             ServicePortKey, ServiceVerdict, SkipReason, SourceRef, Verdict)
from edgeproxy.rules.backends.check import CheckCounts


def port(name, vip):
    key = ServicePortKey("default", name, "", Protocol.TCP)
    return key, ServicePort(key, 80, (vip,), endpoints=(Endpoint("198.18.1.11", 8080),))


def state(*names, errors=()):
    ports = dict(port(n, f"198.19.0.{i + 10}") for i, n in enumerate(names))
    skipped = ServiceVerdict(SourceRef("m.yaml", "9"), "monitoring", "metrics", Verdict.SKIP,
                             SkipReason.LABEL)
    return DesiredState(ports=ports, services=(skipped,), errors=tuple(errors))


@dataclass
class FakeWorker:
    starts_total: int = 1
    kills_total: int = 0
    recycles_total: int = 2


@dataclass
class FakeBudget:
    total: int = 1000
    used: int = 10
    exhausted_total: dict = field(default_factory=lambda: {"tcp": 0, "udp": 3})
    evicted_total: int = 4


class FakeComputer:
    def __init__(self):
        self.filter_mode = FilterMode.FILTER_IF_LABEL_EXISTS
        self.next = Computed(state("a", "b", "c", "d"), None, 4)
        self.calls = []
        self.worker = FakeWorker()

    def compute(self, changed, writing=frozenset()):
        self.calls.append(changed)
        return self.next

    def close(self):
        self.calls.append("close")


class FakeProxy:
    def __init__(self):
        self.calls, self.ports = [], {}
        self.second_ports: dict = {}
        self.udp_timeout, self.tcp_idle_timeout, self.drain_grace = 30.0, None, 0.0
        self.max_connections = 10000
        self.repairs_total = 0
        self.budget = FakeBudget()
        self.problems: list[str] = []  # what health_problems() reports
        self.repairs: list[str] = []  # what the next verify() repairs

    def health_problems(self):
        return list(self.problems)

    def verify(self):
        repaired, self.repairs = self.repairs, []
        self.problems = []
        self.repairs_total += len(repaired)
        return repaired

    def start(self):
        self.calls.append("start")

    def reconcile(self, ports):
        self.calls.append(("reconcile", set(ports)))
        self.ports = {k: self.ports.get(k, 61000 + len(self.ports)) for k in ports}
        return dict(self.ports)

    def sync_routes(self, vips):
        self.calls.append("routes")

    def stats(self):
        return {k: ServiceStats(active_connections=2, bytes_in=100) for k in self.ports}

    def endpoint_reports(self):
        return {k: PortEndpointsReport("", "Cluster", False, endpoints={
            "198.18.1.11:8080": EndpointReport("remote", True, "healthy")}) for k in self.ports}

    def configure_endpoints(self, node, locality_aware, health, probe_concurrency):
        self.calls.append(("configure_endpoints", node, locality_aware))

    def stop(self, grace=None):
        self.calls.append("stop")


class FakeForwarder:
    def __init__(self):
        self.errors_total = {"192.0.2.53:53": 2}
        self.down = False


class FakeDns:
    """Stands in for dns.server.DnsServer: remembers the zones it was given."""

    def __init__(self):
        from edgeproxy.dns.server import DnsStats

        self.stats = DnsStats()
        self.stats.queries[("A", "answer")] = 3
        self.forwarder = FakeForwarder()
        self.cache: dict = {}
        self.zones: list = []
        self.calls: list = []

    def start(self):
        self.calls.append("start")

    def update(self, zone):
        self.zones.append(zone)

    def configure(self, settings):
        self.calls.append(("configure", settings))

    def stop(self):
        self.calls.append("stop")

    def health_problems(self):
        return []

    def status(self):
        return {"listen": ["169.254.96.53:53"], "domain": "cluster.local", "names": 0}


@dataclass
class FakeCheck:
    counts: CheckCounts


@dataclass
class FakeBackend:
    name: str = "fake"
    check: FakeCheck = field(default_factory=lambda: FakeCheck(CheckCounts(7, 3, 2)))


class FakeKeeper:
    def __init__(self, log):
        self.log = log
        self.backend = FakeBackend()
        self.check_period = 1.0
        self.repairs_total = 1
        self.checks_total = 12
        self.check_seconds_total = 0.5
        self.last_repair_descriptions = ["jump moved"]
        self.apply_errors_total = 0
        self.conntrack_deleted_total = 4
        self.problem = None

    def update(self, ruleset):
        self.log.append(("rules", set(ruleset)))
        return True

    def start(self):
        self.log.append("keeper-start")

    def stop(self, cleanup=True):
        self.log.append(("keeper-stop", cleanup))


class FakeWatcher:
    def __init__(self, running=True, events_total=5, restarts_total=1, watchdog_version="6.0.0"):
        self.running, self.events_total = running, events_total
        self.restarts_total, self.watchdog_version = restarts_total, watchdog_version
        self.calls = []

    def start(self, wait=5.0):
        self.calls.append("start")
        return True

    def reschedule(self):
        self.calls.append("reschedule")

    def stop(self):
        self.calls.append("stop")
