"""rules/backends/check.py: the staged check both backends share, with fake stages."""

from __future__ import annotations

from edgeproxy.rules.backends.check import CheckCounts, StagedCheck, only_our_writes
from edgeproxy.rules.render import render_rules
from tests.rules import states


class Kernel:
    """A fake kernel: a generation bumped by every write, and per-chain digests."""

    def __init__(self, targeted: bool = True) -> None:
        self.gen = 7
        self.chains = {"A": "a1", "B": "b1"}
        self.writes = 0
        self.targeted = targeted  # False: like legacy, changed digests go to the full check
        self.calls: list[str] = []

    def foreign_write(self, chain: str, digest: str) -> None:
        self.gen += 1
        self.chains[chain] = digest

    def our_write(self) -> None:
        self.gen += 1
        self.writes += 1
        self.chains = {"A": "a1", "B": "b1"}

    def stage(self, rs) -> StagedCheck:
        def repair_changed(ruleset, changed, digests):
            self.calls.append(f"repair {sorted(changed)}")
            if not self.targeted:
                return None
            self.our_write()
            return [f"{c} changed" for c in sorted(changed)]

        def full_check(ruleset):
            self.calls.append("full")
            if self.chains == {"A": "a1", "B": "b1"}:
                return []
            self.our_write()
            return ["rewritten"]

        return StagedCheck(lambda argv, input=None: None, lambda: self.gen,
                           lambda ruleset: dict(self.chains), lambda: self.writes,
                           repair_changed, full_check)


RS = render_rules(states.example_ports(), states.proxy_ports_for(states.example_ports()),
                  states.LISTEN)


def test_our_write_vouches_then_the_generation_answers_and_digests_are_taken():
    kernel = Kernel()
    check = kernel.stage(RS)
    check.write(RS, kernel.our_write)
    assert check.clean == (kernel.gen, RS) and check.verified is None
    assert check.check_and_repair(RS) == [] and check.verified[0] == kernel.chains
    assert check.check_and_repair(RS) == []
    assert check.counts == CheckCounts(generation=2) and kernel.calls == []


def test_a_foreign_write_elsewhere_is_answered_by_the_digests():
    kernel = Kernel()
    check = kernel.stage(RS)
    check.write(RS, kernel.our_write)
    check.check_and_repair(RS)
    kernel.gen += 1  # someone wrote, not to our chains
    assert check.check_and_repair(RS) == []
    assert check.counts == CheckCounts(generation=1, digests=1) and kernel.calls == []
    assert check.check_and_repair(RS) == []  # clean again: the generation answers
    assert check.counts.generation == 2


def test_changed_digests_are_repaired_exactly_and_the_repair_vouches():
    kernel = Kernel()
    check = kernel.stage(RS)
    check.write(RS, kernel.our_write)
    check.check_and_repair(RS)
    kernel.foreign_write("B", "b2")
    assert check.check_and_repair(RS) == ["B changed"]
    assert kernel.calls == ["repair ['B']"]
    assert check.clean == (kernel.gen, RS)  # our repair was the only write since
    assert check.check_and_repair(RS) == [] and check.counts.full == 0


def test_a_declined_targeted_repair_and_unknown_digests_go_to_the_full_check():
    kernel = Kernel(targeted=False)
    check = kernel.stage(RS)
    check.write(RS, kernel.our_write)
    check.check_and_repair(RS)
    kernel.foreign_write("A", "a2")
    assert check.check_and_repair(RS) == ["rewritten"]
    assert kernel.calls == ["repair ['A']", "full"]
    check.forget()
    kernel.gen += 1
    assert check.check_and_repair(RS) == [] and check.counts.full == 2


def test_another_rule_set_is_never_vouched_for_by_the_old_one():
    kernel = Kernel()
    check = kernel.stage(RS)
    check.write(RS, kernel.our_write)
    check.check_and_repair(RS)
    other = render_rules({}, {}, states.LISTEN)
    assert check.check_and_repair(other) == [] and kernel.calls == ["full"]


def test_no_generation_no_trust():
    kernel = Kernel()
    check = kernel.stage(RS)
    check.generation = lambda: None  # legacy tables
    check.write(RS, kernel.our_write)
    assert check.clean is None
    assert check.check_and_repair(RS) == [] and check.counts == CheckCounts(full=1)
    assert check.check_and_repair(RS) == [] and check.counts == CheckCounts(digests=1, full=1)


def test_only_our_writes_counts_transactions_across_the_32_bit_wrap():
    assert only_our_writes(10, 12, 2)
    assert not only_our_writes(10, 13, 2)  # someone else wrote too
    assert only_our_writes(0xFFFFFFFF, 1, 2)
    assert not only_our_writes(None, 12, 2) and not only_our_writes(10, None, 2)
