"""The staged check both rule backends run every period: generation -> digests -> full compare
-> repair, each stage only when the cheaper one before it cannot vouch for the rules.

1. generation: the nf_tables generation id (nft flavour, nftables) is the one of the last
   check that found everything right, or of our own write: nobody wrote anything since
   (0.1 ms). The reference digests are taken then, while the generation proves they are of
   what we wrote, so that a later write by someone else is judged by digests, not a listing.
2. digests: raw-rule digests of what matters to us equal those known right for this very
   rule set; when some differ, the backend may repair exactly those (`repair_changed`)
   without reading a table, or decline (legacy: its digest is of a whole table).
3. full: the backend reads its tables and compares them with the rule set (`full_check`),
   repairing what differs.
A write of ours whose generation moved by exactly our transactions vouches for the tables
(`only_our_writes`), after `apply` and after a repair alike. Digests and generation are read
before the tables: a write during the check makes the next one look again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Generic, Hashable, Protocol, TypeVar

from edgeproxy.tools import LocalRunner, Runner

from ..render import RuleSet

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


def off_hub(runner: Runner, func: Callable[..., T], *args: object) -> T:
    """``func(*args)``, in gevent's thread pool when the backend's runner is cooperative (see
    `LocalRunner.off_hub`); directly for any other runner (a test's fake)."""
    if isinstance(runner, LocalRunner):
        return runner.off_hub(func, *args)
    return func(*args)


def only_our_writes(before: int | None, after: int | None, writes: int) -> bool:
    """True when the nf_tables generation went from ``before`` to ``after`` by exactly our
    ``writes`` transactions (each bumps it by one; it is a 32-bit counter): nobody else
    wrote in between, so the kernel holds exactly what we wrote."""
    if before is None or after is None:
        return False
    return after == (before + writes) & 0xFFFFFFFF


@dataclass
class CheckCounts:
    """How each check was answered (exported as edgeproxy_rule_checks_answered_total)."""

    generation: int = 0  # the unchanged nf_tables generation alone
    digests: int = 0  # raw-rule digests (and, where some changed, a targeted repair)
    full: int = 0  # the tables were read and compared


class CheckReport(Protocol):
    """What the keeper, metrics and status read of a backend's check."""

    counts: CheckCounts


class StagedCheck(Generic[K]):
    """The state between checks of one backend: which rule set was last known right, by
    which generation and which digests. The backend supplies the stages:

    ``generation()``        the nf_tables generation, None where there is none (legacy)
    ``digests(ruleset)``    {key: digest}, None when they cannot be read
    ``writes()``            how many transactions the backend has written so far
    ``repair_changed(ruleset, changed, digests)``
                            repairs for the keys whose digest changed, or None to leave it
                            to ``full_check``
    ``full_check(ruleset)`` read, compare and repair; the repairs made
    ``trusted()``           (optional) a write of ours vouched for the tables
    """

    def __init__(self, runner: Runner, generation: Callable[[], int | None],
                 digests: Callable[[RuleSet], dict[K, str] | None],
                 writes: Callable[[], int],
                 repair_changed: Callable[[RuleSet, set[K], dict[K, str]], list[str] | None],
                 full_check: Callable[[RuleSet], list[str]],
                 trusted: Callable[[], None] | None = None) -> None:
        self.runner = runner
        self.generation = generation
        self.digests = digests
        self.writes = writes
        self.repair_changed = repair_changed
        self.full_check = full_check
        self.trusted = trusted  # told when a write of ours vouched for the tables
        self.counts = CheckCounts()
        # The generation of the last clean check (or of our own write), and the digests known
        # right, each with the rule set they vouch for (compared by identity: the keeper
        # passes the same RuleSet object until the state changes).
        self.clean: tuple[int, RuleSet] | None = None
        self.verified: tuple[dict[K, str], RuleSet] | None = None

    def forget(self) -> None:
        """Know nothing: the next check reads everything (as after another writer raced us)."""
        self.clean = self.verified = None

    def write(self, ruleset: RuleSet, write: Callable[[], None]) -> None:
        """Run one write of ``ruleset``; it vouches for the tables when nobody else wrote."""
        self.forget()
        before, writes = self.generation(), self.writes()
        write()
        self._trust(ruleset, before, writes)

    def _trust(self, ruleset: RuleSet, before: int | None, writes: int) -> None:
        if before is None:
            return
        after = self.generation()
        if only_our_writes(before, after, self.writes() - writes):
            self.clean = (after, ruleset)  # type: ignore[assignment]
            if self.trusted is not None:
                self.trusted()

    def _digests(self, ruleset: RuleSet) -> dict[K, str] | None:
        return off_hub(self.runner, self.digests, ruleset)

    def check_and_repair(self, ruleset: RuleSet) -> list[str]:
        """Repairs made (empty when all was right); finds every kind of damage."""
        generation = self.generation()
        clean = self.clean
        if generation is not None and clean is not None and clean[0] == generation \
                and clean[1] is ruleset:
            if self.verified is None or self.verified[1] is not ruleset:
                digests = self._digests(ruleset)
                if digests is not None and self.generation() == generation:
                    self.verified = (digests, ruleset)
            self.counts.generation += 1
            return []
        self.clean = None
        digests = self._digests(ruleset)
        known, self.verified = self.verified, None
        writes = self.writes()
        repairs: list[str] | None = None
        if digests is not None and known is not None and known[1] is ruleset:
            changed = {key for key, value in digests.items() if known[0].get(key) != value}
            repairs = self.repair_changed(ruleset, changed, digests) if changed else []
            if repairs is not None:
                self.counts.digests += 1
        if repairs is None:
            self.counts.full += 1
            repairs = self.full_check(ruleset)
        if repairs:
            self._trust(ruleset, generation, writes)  # our repair writes vouch, as apply's
            return repairs
        if generation is not None:
            self.clean = (generation, ruleset)
        if digests is not None:
            self.verified = (digests, ruleset)
        return repairs
