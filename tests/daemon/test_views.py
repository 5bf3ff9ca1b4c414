"""The Daemon, its real parts and the tests' fakes implement the Protocols that status,
metrics and http read (views.py) and that the Daemon drives (core.py)."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from edgeproxy.daemon import core, views
from edgeproxy.daemon.compute import Computed, StateComputer
from edgeproxy.daemon.config import build_config
from edgeproxy.daemon.watcher import DirectoryWatcher
from edgeproxy.forwarding.server import ProxyServer
from edgeproxy.model import DesiredState
from edgeproxy.rules.backends import Backend, make_backend
from edgeproxy.tools import Result
from edgeproxy.rules.keeper import RuleKeeper
from edgeproxy.rules.render import RuleRenderer
from edgeproxy.dns.server import DnsServer, DnsSettings
from tests.daemon.fakes import FakeComputer, FakeDns, FakeKeeper, FakeProxy, FakeWatcher
from tests.rules.test_keeper import FakeBackend as FakeRuleBackend
from tests.support.protocols import assert_implements, mismatches


def _no_commands(argv, input=None) -> Result:
    raise AssertionError(f"constructing a backend ran {argv}")


def test_a_started_daemon_is_what_status_metrics_and_http_read(daemon):
    assert_implements(daemon, views.DaemonView)


def test_an_unstarted_daemon_too():
    config = build_config({"config": None, "manifests": "/nonexistent"})
    assert_implements(core.Daemon(config, watch=False, environ={}), views.DaemonView)


@pytest.mark.parametrize("fake, protocol", [
    (FakeComputer(), core.Computer),
    (FakeProxy(), core.Proxy),
    (FakeKeeper([]), core.Keeper),
    (FakeWatcher(), core.Watcher),
    (FakeDns(), core.DnsService),
    (Computed(DesiredState(ports={}), None, 0), core.Computation),
])
def test_the_fakes_the_daemon_tests_use(fake, protocol):
    assert_implements(fake, protocol)


def test_the_real_parts():
    assert_implements(StateComputer, core.Computer)  # classes: their methods
    assert_implements(ProxyServer, core.Proxy)
    assert_implements(DnsServer([("127.0.0.1", 53)], DnsSettings(upstreams=("192.0.2.1",))),
                      core.DnsService)
    assert_implements(RuleKeeper(FakeRuleBackend()), core.Keeper)
    assert_implements(DirectoryWatcher(Path("/nonexistent"), lambda paths: None), core.Watcher)
    # core.Renderer is a Callable alias: (ports, proxy_ports, listen, second_ports) -> RuleSet
    assert list(inspect.signature(RuleRenderer()).parameters) == ["ports", "proxy_ports",
                                                                 "listen", "second_ports"]


@pytest.mark.parametrize("name", ["legacy", "nft", "nftables"])
def test_every_rule_backend_and_the_keepers_fake(name):
    backend = make_backend(name, _no_commands)
    assert_implements(backend, Backend)
    assert_implements(backend, views.BackendView)
    assert_implements(FakeRuleBackend(), Backend)


def test_a_fake_that_drifted_is_caught():
    class Drifted(FakeKeeper):
        def __init__(self) -> None:
            super().__init__([])
            del self.repairs_total
            self.repair_total = 1  # renamed
            self.check_seconds_total = "0.5"  # wrong kind

        def update(self, rules):  # argument renamed
            return True

    problems = mismatches(Drifted(), core.Keeper)
    assert any("repairs_total: attribute missing" in p for p in problems)
    assert any("check_seconds_total: str is not" in p for p in problems)
    assert any(p.startswith("Drifted.update(rules)") for p in problems)
    assert "PosixPath.stats: method missing" in mismatches(Path("/"), views.ProxyView)


def test_metrics_and_status_need_nothing_of_core():
    """core imports http, http imports metrics: metrics importing core was a cycle."""
    import subprocess
    import sys

    code = ("import sys, edgeproxy.daemon.http, edgeproxy.daemon.status\n"
            "assert 'edgeproxy.daemon.core' not in sys.modules, 'core imported'\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
