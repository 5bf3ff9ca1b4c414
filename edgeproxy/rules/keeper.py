"""RuleKeeper: applies the current rule set and keeps it in place against other writers.

kube-proxy re-inserts its KUBE-SERVICES jump at position 1 after a flush, EdgeMesh's exit and
``kube-proxy --cleanup`` delete the KUBE-PORTALS-* chains (shared names), and nobody moves an
existing jump. So a greenlet re-checks every ``check_period`` seconds (default 1 s) and repairs
order, jumps, chains and rules; every repair is logged and counted. Every period checks every
rule, so any damage is repaired within one period plus the check-and-repair time: the
backends make that affordable at 10,000 services (an unchanged nf_tables generation answers at
once, else raw-rule digests, else our chains compared as text slices; bench/rules_apply.py
prints the cost). Whenever capture starts or changes (first install, a repair, a proxy-port
change, a service added or removed) the UDP conntrack entries of the affected destinations are
deleted so existing flows (DNS) follow.

gevent-friendly: backends run their commands through edgeproxy.spawn and their kernel reads in
gevent's thread pool when gevent is loaded, and one lock keeps an update and a periodic check
from interleaving.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Iterable

import gevent
import gevent.lock

from .backends.base import Backend, CleanupReport
from .conntrack import flush_udp_flows
from .render import RuleSet

log = logging.getLogger(__name__)

Flusher = Callable[[Iterable[tuple[str | None, int]]], int]


def _udp_targets(ruleset: RuleSet | None) -> dict[tuple[str | None, int], tuple[str, str]]:
    if ruleset is None:
        return {}
    return {(c.ip, c.port): (c.destination, c.host_target) for c in ruleset.captures
            if c.protocol == "udp"}


class RuleKeeper:
    def __init__(self, backend: Backend, check_period: float = 1.0,
                 flush: Flusher | None = None) -> None:
        if check_period <= 0:
            raise ValueError("check_period must be positive")
        self.checks_total = 0
        self.check_seconds_total = 0.0  # time spent in periodic checks (and their repairs)
        self.backend = backend
        self.check_period = check_period
        self.flush = flush or flush_udp_flows
        self.ruleset: RuleSet | None = None
        # What is known to be in the kernel: written by the last successful apply or confirmed
        # by the last check. The next update writes only its difference from this.
        self._written: RuleSet | None = None
        self.repairs_total = 0
        self.apply_errors_total = 0
        self.conntrack_deleted_total = 0
        self.last_repair_descriptions: list[str] = []
        # Why the rules are not known to be in place (the last apply or check failed), for
        # /healthz; None while they are.
        self.problem: str | None = None
        self._lock = gevent.lock.RLock()
        self._greenlet: gevent.Greenlet | None = None

    def _flush(self, targets: Iterable[tuple[str | None, int]]) -> None:
        targets = list(targets)
        if targets:
            try:
                self.conntrack_deleted_total += self.flush(targets)
            except Exception:  # noqa: BLE001 - flushing is best effort, never fatal
                log.exception("conntrack flush failed")

    def update(self, ruleset: RuleSet) -> bool:
        """Apply ``ruleset``; True on success. A failure is logged and counted, and the
        periodic check keeps retrying towards it."""
        with self._lock:
            previous = _udp_targets(self.ruleset)
            self.ruleset = ruleset
            written, self._written = self._written, None
            try:
                self.backend.apply(ruleset, previous=written)
            except Exception as exc:  # noqa: BLE001 - keep running, retry on the next check
                self.apply_errors_total += 1
                self.problem = f"applying rules with backend {self.backend.name} failed: {exc}"
                log.error("applying rules with backend %s failed: %s", self.backend.name, exc)
                return False
            self.problem = None
            self._written = ruleset
            current = _udp_targets(ruleset)
            changed = [t for t, dest in current.items() if previous.get(t) != dest]
            changed += [t for t in previous if t not in current]
            self._flush(changed)
            return True

    def check_once(self) -> list[str]:
        """One check-and-repair pass of every rule (what the greenlet runs every period)."""
        with self._lock:
            if self.ruleset is None:
                return []
            self.checks_total += 1
            started = time.monotonic()
            try:
                repairs = self.backend.check_and_repair(self.ruleset)
            except Exception as exc:  # noqa: BLE001
                self.apply_errors_total += 1
                self.problem = f"checking rules with backend {self.backend.name} failed: {exc}"
                log.error("checking rules with backend %s failed: %s", self.backend.name, exc)
                return []
            finally:
                self.check_seconds_total += time.monotonic() - started
            self.problem = None
            self._written = self.ruleset  # checked (and repaired where needed)
            if repairs:
                self.repairs_total += len(repairs)
                self.last_repair_descriptions = list(repairs)
                for what in repairs:
                    log.warning("repaired: %s", what)
                # While our rules were broken new UDP flows may have been NATed elsewhere.
                self._flush(_udp_targets(self.ruleset))
            return repairs

    def _loop(self) -> None:
        while True:
            gevent.sleep(self.check_period)
            self.check_once()

    def start(self) -> None:
        if self._greenlet is None or self._greenlet.dead:
            self._greenlet = gevent.spawn(self._loop)

    def stop(self, cleanup: bool = True) -> CleanupReport | None:
        """Stop checking; with ``cleanup`` remove every rule so kube-proxy takes the traffic
        back (and delete our UDP flows so they follow)."""
        if self._greenlet is not None:
            self._greenlet.kill()
            self._greenlet = None
        if not cleanup:
            return None
        with self._lock:
            report = self.backend.cleanup()
            for what in report.removed:
                log.info("removed %s", what)
            for err in report.errors:
                log.error("cleanup: %s", err)
            self._flush(_udp_targets(self.ruleset))
            self.ruleset = None
            self._written = None
            return report
