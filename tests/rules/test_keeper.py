"""RuleKeeper in a namespace: periodic repair within check period + 1 s, counters, UDP conntrack
flushing when capture starts/changes, cleanup on stop."""

from __future__ import annotations

import time

import gevent
import pytest

from edgeproxy.rules.backends import make_backend, namespace_runner
from edgeproxy.rules.backends.base import CleanupReport
from edgeproxy.rules.keeper import RuleKeeper
from edgeproxy.rules.render import render_rules
from tests.rules import states
from tests.rules.node import install_kube_proxy, ours_before_kube, targets


def _rs(ports=None, pp=None):
    ports = states.example_ports() if ports is None else ports
    return render_rules(ports, pp or states.proxy_ports_for(ports), states.LISTEN)


class FakeBackend:
    """Records calls; `broken` makes the next check report a repair."""

    name = "fake"

    def __init__(self) -> None:
        self.applied = []
        self.broken = False
        self.fail_apply = False
        self.checks: list[bool] = []

    def apply(self, ruleset) -> None:
        if self.fail_apply:
            raise RuntimeError("iptables-restore failed")
        self.applied.append(ruleset)

    def check_and_repair(self, ruleset, quick=False) -> list[str]:
        self.checks.append(quick)
        if self.broken:
            self.broken = False
            return ["nat PREROUTING: jumps after KUBE-SERVICES"]
        return []

    def diagnose(self, ruleset):
        return []

    def cleanup(self) -> CleanupReport:
        return CleanupReport(removed=["chain X"])


def test_update_flushes_udp_targets_only_when_capture_changes():
    flushed: list = []
    keeper = RuleKeeper(FakeBackend(), flush=lambda t: flushed.append(sorted(t)) or 0)
    keeper.update(_rs())
    assert flushed == [[("198.19.0.53", 53)]]  # first install: the DNS UDP port
    keeper.update(_rs())
    assert len(flushed) == 1  # same capture: nothing to flush
    pp = states.proxy_ports_for(states.example_ports())
    pp[states.DNS_UDP] = 62000  # proxy port changed
    keeper.update(_rs(pp=pp))
    assert flushed[-1] == [("198.19.0.53", 53)]
    ports = states.example_ports()
    del ports[states.DNS_UDP]  # service removed: its flows must go back to kube-proxy
    keeper.update(_rs(ports))
    assert flushed[-1] == [("198.19.0.53", 53)]
    assert len(flushed) == 3


def test_repairs_are_counted_logged_and_flush(caplog):
    backend = FakeBackend()
    flushed: list = []
    keeper = RuleKeeper(backend, flush=lambda t: flushed.append(list(t)) or 0)
    keeper.update(_rs())
    backend.broken = True
    assert keeper.check_once() == ["nat PREROUTING: jumps after KUBE-SERVICES"]
    assert keeper.repairs_total == 1
    assert keeper.last_repair_descriptions == ["nat PREROUTING: jumps after KUBE-SERVICES"]
    assert "repaired: nat PREROUTING" in caplog.text
    assert len(flushed) == 2  # install + after the repair
    assert keeper.check_once() == [] and keeper.repairs_total == 1


def test_apply_failure_is_counted_not_raised():
    backend = FakeBackend()
    backend.fail_apply = True
    keeper = RuleKeeper(backend, flush=lambda t: 0)
    assert keeper.update(_rs()) is False
    assert keeper.apply_errors_total == 1


@pytest.mark.parametrize("flavor", ["legacy", "nft"])
def test_kube_proxy_jump_at_rule_one_repaired_within_period_plus_one_second(netns, flavor):
    period = 0.3
    keeper = RuleKeeper(make_backend(flavor, namespace_runner(netns.name)), check_period=period,
                        flush=lambda t: 0)
    keeper.update(_rs())
    keeper.start()
    try:
        install_kube_proxy(netns, flavor, at_top=True)
        started = time.monotonic()
        # The counter is bumped when the keeper's restore has returned, a moment after the
        # tables changed, so wait for both.
        while not (all(ours_before_kube(targets(netns, flavor, c))
                       for c in ("PREROUTING", "OUTPUT")) and keeper.repairs_total >= 2):
            assert time.monotonic() - started < period + 1.0, "not repaired in time"
            gevent.sleep(0.05)
        assert any("KUBE-SERVICES" in d for d in keeper.last_repair_descriptions)
    finally:
        report = keeper.stop(cleanup=True)
    assert report is not None and report.ok
    assert targets(netns, flavor, "PREROUTING") == ["KUBE-SERVICES"]


def test_periodic_checks_are_quick_with_a_full_one_every_nth():
    backend = FakeBackend()
    keeper = RuleKeeper(backend, check_period=0.01, flush=lambda t: 0, full_check_every=3)
    keeper.update(_rs())
    keeper.start()
    while len(backend.checks) < 6:
        gevent.sleep(0.01)
    keeper.stop(cleanup=False)
    assert backend.checks[:6] == [True, True, False, True, True, False]
