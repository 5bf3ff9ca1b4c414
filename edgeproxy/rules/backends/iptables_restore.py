"""The ``legacy`` and ``nft`` backends: iptables-restore --noflush for every write.

Why restore and not python-iptables: one restore of 10,000 rules takes tens of milliseconds
where building them as python-iptables objects takes seconds (bench/rules_apply.py), restore
takes the xtables lock itself (``-w``), and a table's edit is one atomic transaction. Reading is
``iptables-save -t TABLE``; for the legacy flavour a table is only read when it is listed in
/proc/net/ip_tables_names, because asking libiptc for a missing table creates it (python-
iptables does the same, so it would need that guard too; one parser for save text serves both
flavours). See docs/rules.md.

Each table is planned from its live contents: our chains are rebuilt when any differs (or
always, for `apply`), and the jumps in the built-in chains are fixed with rule-number deletes
and inserts placed right before the first ``KUBE-SERVICES`` jump, all in one restore.
"""

from __future__ import annotations

import logging
from collections import Counter

from ..iptables_text import Rule, Table, parse_save, split_rule
from ..render import (ALL_OWN_CHAINS, JUMPS, KUBE_SERVICES, OWN_CHAINS, TABLES, RuleSet,
                      format_rule)
from .. import nfnetlink, xtables
from ..incremental import incremental_restore_text
from edgeproxy.tools import LocalRunner, Runner

from .base import BackendError, CleanupReport, netlink_target
from .check import StagedCheck

log = logging.getLogger(__name__)

LOCK_WAIT = "5"  # seconds iptables waits for /run/xtables.lock


class IptablesRestoreBackend:
    def __init__(self, flavor: str, runner: Runner | None = None) -> None:
        if flavor not in ("legacy", "nft"):
            raise ValueError(f"unknown iptables flavour {flavor!r}")
        self.flavor = flavor
        self.name = flavor
        self.run = runner or LocalRunner()
        self._netlink, self._netns = netlink_target(self.run)
        self.restores_total = 0  # successful iptables-restore transactions
        self.checks_parsed = 0  # full checks that had to parse a table (something differed)
        # See check_and_repair: the nft flavour has a generation, both have digests.
        self.check = StagedCheck(self.run, self.generation, self._digests,
                                 lambda: self.restores_total, self._repair_changed,
                                 self._compare_and_repair)

    # -- commands -------------------------------------------------------------------------

    def _cmd(self, family: int, tool: str) -> str:
        base = "iptables" if family == 4 else "ip6tables"
        return f"{base}-{self.flavor}-{tool}"

    def _table_exists(self, family: int, table: str) -> bool:
        if self.flavor != "legacy":
            return True  # iptables-nft-save never creates anything
        names = "/proc/net/ip_tables_names" if family == 4 else "/proc/net/ip6_tables_names"
        res = self.run(["cat", names])
        return res.returncode == 0 and table in res.stdout.split()

    def save(self, family: int, table: str) -> str | None:
        """``iptables-save -t TABLE`` text, None when the (legacy) table does not exist."""
        if not self._table_exists(family, table):
            return None
        res = self.run([self._cmd(family, "save"), "-t", table])
        if res.returncode != 0:
            raise BackendError(f"{self._cmd(family, 'save')} -t {table} failed: "
                               f"{res.stderr.strip()}")
        return res.stdout

    def read(self, family: int, table: str) -> Table | None:
        """The live table, or None when it does not exist (legacy) / cannot be read.

        Rules of our own chains are kept as raw lines in ``table.raw`` (see `split_own`)."""
        text = self.save(family, table)
        return None if text is None else split_own(text, table)

    def generation(self) -> int | None:
        """nf_tables generation id (nft flavour), None for legacy or when unreadable."""
        if self.flavor != "nft" or not self._netlink:
            return None
        return nfnetlink.generation(self._netns)

    def restore(self, family: int, text: str) -> None:
        cmd = [self._cmd(family, "restore"), "--noflush", "-w", LOCK_WAIT]
        res = self.run(cmd, input=text)
        if res.returncode != 0:
            raise BackendError(f"{' '.join(cmd)} failed ({res.returncode}): "
                               f"{res.stderr.strip()}\n--- input ---\n{text[:2000]}")
        self.restores_total += 1

    # -- planning (pure given the live table) ---------------------------------------------

    def plan(self, ruleset: RuleSet, family: int, table: str, live: Table | None,
             force: bool) -> tuple[str | None, list[str]]:
        """(restore text or None when nothing to do, one description per problem found)."""
        where = f"{'ip6tables' if family == 6 else 'iptables'}-{self.flavor} {table}"
        problems: list[str] = []
        broken: set[str] = set()  # our chains to rebuild
        wanted = ruleset.chain_rules(family, table)
        for chain, specs in wanted.items():
            if live is None or chain not in live.chains:
                problems.append(f"{where}: chain {chain} missing")
                broken.add(chain)
                continue
            raw = live.raw.get(chain) if live.raw is not None else None
            if raw is not None:
                # Fast path (a 20,000-rule table is checked every few seconds): iptables-save
                # prints our rules token for token as rendered, quotes aside. Only lines that
                # differ are compared semantically (another iptables version may print a rule
                # differently without it being wrong).
                expected = [expected_line(chain, spec) for spec in specs]
                if raw == expected:
                    continue
                if len(raw) == len(expected):
                    rules = live.raw_lines[chain]  # type: ignore[index]
                    if all(Rule(chain, tuple(split_rule(rules[i])[2:])).key()
                           == Rule(chain, specs[i]).key()
                           for i in range(len(raw)) if raw[i] != expected[i]):
                        continue
                broken.add(chain)
                problems.append(_chain_mismatch(where, chain, raw, expected))
                continue
            have = [r.key() for r in live.rules(chain)]
            want = [Rule(chain, spec).key() for spec in specs]
            if have != want:
                broken.add(chain)
                problems.append(_chain_mismatch(where, chain, have, want))
        jump_lines: list[str] = []
        for chain in dict.fromkeys(j.chain for j in ruleset.jumps(table)):
            lines, why = jump_edits(live, chain, [j.tokens for j in ruleset.jumps(table)
                                                  if j.chain == chain])
            if why:
                problems.append(f"{where}: {chain}: {why}")
                jump_lines += lines
        if not force and not problems:
            return None, []
        # Only broken chains are flushed and refilled; a misplaced jump costs a two-line restore.
        text = ruleset.restore_text(family, table, jump_lines=jump_lines,
                                    only_chains=None if force else broken)
        return text, problems

    # -- Backend interface ----------------------------------------------------------------

    def apply(self, ruleset: RuleSet, previous: RuleSet | None = None) -> None:
        """Write ``ruleset``. ``previous``: what the caller last wrote successfully; a small
        difference is then written as -D/-I lines (see incremental.py) without reading the
        table, and anything else (or a failed edit) as a check of the live table plus a
        rebuild of the chains that differ.

        nft flavour: when the nf_tables generation moved by exactly our own transactions,
        nobody else wrote in between, so the table is what we just wrote and the next
        periodic check is answered by the generation alone (check.py). Otherwise that check
        would read the whole table (an iptables-nft-save, ~0.7 s at 10,000 services) after
        every one of our writes, holding the keeper's lock while the next reload waits."""
        self.check.write(ruleset, lambda: self._write(ruleset, previous))

    def _write(self, ruleset: RuleSet, previous: RuleSet | None) -> None:
        for family in (4, 6):
            if family in ruleset.families:
                for table in ruleset.tables(family):
                    if previous is not None and self._apply_edit(previous, ruleset, family,
                                                                 table):
                        continue
                    # Nothing is written when the live table already matches.
                    text, _ = self.plan(ruleset, family, table, self.read(family, table),
                                        force=False)
                    if text is not None:
                        self.restore(family, text)
            else:
                self._remove_family(family)

    def _apply_edit(self, previous: RuleSet, ruleset: RuleSet, family: int,
                    table: str) -> bool:
        """True when the incremental edit was written (or nothing changed)."""
        text = incremental_restore_text(previous, ruleset, family, table)
        if text is None:
            return False
        if not text:
            return True
        try:
            self.restore(family, text)
        except BackendError as exc:
            # The table is not what we last wrote (changed behind our back): the whole
            # transaction was refused, so fall back to reading it and rebuilding.
            log.info("incremental write refused, rewriting the chains: %s",
                     str(exc).splitlines()[0])
            return False
        return True

    def _rebuild(self, ruleset: RuleSet, chains: set[tuple[int, str, str]],
                 digests: dict[tuple[int, str, str], str]) -> list[str]:
        """nft flavour: flush and refill our ``chains`` whose raw rules changed since they
        were known right for this very rule set. Only we write our chains, so that is damage,
        and no iptables-nft-save (most of a second at 20,000 rules) is needed to see it."""
        problems: list[str] = []
        by_table: dict[tuple[int, str], set[str]] = {}
        for family, table, chain in sorted(chains):
            tool = f"{'iptables' if family == 4 else 'ip6tables'}-{self.flavor}"
            what = ("missing" if digests[(family, table, chain)] == "absent"
                    else "changed behind our back (raw-rule digest)")
            problems.append(f"{tool} {table}: chain {chain} {what}")
            by_table.setdefault((family, table), set()).add(chain)
        for (family, table), names in by_table.items():
            self.restore(family, ruleset.restore_text(family, table, jump_lines=[],
                                                      only_chains=names))
        return problems

    def _fix_jumps(self, ruleset: RuleSet, chains: set[tuple[int, str, str]]) -> list[str]:
        """Check (and fix) our jumps in the built-in ``chains`` only, with ``-S CHAIN`` (a few
        ms where a save of the 20,000-rule table takes hundreds); for when nothing else of
        ours changed. Misplaced, duplicate or missing jumps are fixed with one restore of the
        jump lines per table."""
        problems: list[str] = []
        edits: dict[tuple[int, str], list[str]] = {}
        for family, table, chain in sorted(chains):
            tool = f"{'iptables' if family == 4 else 'ip6tables'}-{self.flavor}"
            res = self.run([tool, "-w", LOCK_WAIT, "-t", table, "-S", chain])
            if res.returncode != 0:
                raise BackendError(f"{tool} -t {table} -S {chain} failed: "
                                   f"{res.stderr.strip()}")
            live = parse_save(f"*{table}\n{res.stdout}COMMIT\n")[table]
            lines, why = jump_edits(live, chain, [j.tokens for j in ruleset.jumps(table)
                                                  if j.chain == chain])
            if why:
                problems.append(f"{tool} {table}: {chain}: {why}")
                edits.setdefault((family, table), []).extend(lines)
        for (family, table), lines in edits.items():
            self.restore(family, f"*{table}\n" + "\n".join(lines) + "\nCOMMIT\n")
        return problems

    def check_and_repair(self, ruleset: RuleSet) -> list[str]:
        """Repairs made (empty when all was right); finds every kind of damage.

        The stages are check.py's: (1) nft flavour: the nf_tables generation (0.1 ms);
        (2) digests of the raw rules (nft flavour: per chain, our chains and the built-in
        chains with our jumps, so writes elsewhere do not count; legacy: the whole tables,
        counters left out; about half of an iptables-save at 20,000 rules). nft flavour: the
        digests say which chains changed, so no table is read: our chains that changed are
        rebuilt (only we write them), and the built-in chains that changed (kube-proxy
        re-inserted its jump at rule 1) are listed with -S and our jumps fixed; (3) one
        iptables-save per table, our chains compared as slices of its text against what we
        rendered (the save itself, plus a few ms); only when that differs, the table is
        parsed, planned and repaired.
        """
        return self.check.check_and_repair(ruleset)

    def _repair_changed(self, ruleset: RuleSet, changed: set[tuple[int, str, str]],
                        digests: dict[tuple[int, str, str], str]) -> list[str] | None:
        """nft flavour: repair the chains whose digests changed; legacy: None (its digest is
        of a whole table, so the full check finds out what changed)."""
        if self.flavor != "nft":
            return None
        jump_chains = {j.chain for j in ruleset.jumps("nat") + ruleset.jumps("filter")}
        own = {key for key in changed if key[2] not in jump_chains}
        # Chains first: a jump needs its chain to exist.
        repairs = self._rebuild(ruleset, own, digests) if own else []
        return repairs + (self._fix_jumps(ruleset, changed - own) if changed - own else [])

    def _compare_and_repair(self, ruleset: RuleSet) -> list[str]:
        repairs: list[str] = []
        for family in ruleset.families:
            for table in ruleset.tables(family):
                saved = self.save(family, table)
                if saved is not None and saved_matches(ruleset, family, table, saved):
                    continue
                self.checks_parsed += 1
                live = None if saved is None else split_own(saved, table)
                text, problems = self.plan(ruleset, family, table, live, force=False)
                if text is not None:
                    self.restore(family, text)
                    repairs += problems
        return repairs

    def _digests(self, ruleset: RuleSet) -> dict[tuple[int, str, str], str] | None:
        """Digests that change whenever a rule that matters to us may have changed, None when
        they cannot be read. nft flavour: per chain, the raw rules of our chains and of the
        built-in chains holding our jumps (iptables-nft tables are nf_tables tables named like
        the iptables ones); legacy: per table, the table blob without counters (xtables.py)."""
        if not self._netlink:
            return None
        result: dict[tuple[int, str, str], str] = {}
        for family in ruleset.families:
            for table in ruleset.tables(family):
                if self.flavor == "legacy":
                    digest = xtables.table_digest(family, table, netns=self._netns)
                    if digest is None:
                        return None
                    result[(family, table, "*")] = digest
                    continue
                chains = [*ruleset.chain_rules(family, table),
                          *dict.fromkeys(j.chain for j in ruleset.jumps(table))]
                per_chain = nfnetlink.chain_digests(family, table, chains, netns=self._netns)
                if per_chain is None:
                    return None
                result.update({(family, table, c): d for c, d in per_chain.items()})
        return result

    def diagnose(self, ruleset: RuleSet | None) -> list[str]:
        """Problems without repairing; with no rule set only the jumps and chains are checked."""
        problems: list[str] = []
        for family in (ruleset.families if ruleset else (4,)):
            for table in TABLES:
                live = self.read(family, table)
                if ruleset is not None:
                    problems += self.plan(ruleset, family, table, live, force=False)[1]
                    continue
                for chain in OWN_CHAINS[table]:
                    if live is None or chain not in live.chains:
                        problems.append(f"{self.flavor} {table}: chain {chain} missing")
                for chain in dict.fromkeys(j.chain for j in JUMPS if j.table == table):
                    _, why = jump_edits(live, chain,
                                        [j.tokens for j in JUMPS
                                         if j.table == table and j.chain == chain])
                    if why:
                        problems.append(f"{self.flavor} {table}: {chain}: {why}")
        return problems

    def _remove_family(self, family: int, report: CleanupReport | None = None) -> None:
        for table in TABLES:
            try:
                live = self.read(family, table)
            except BackendError as exc:
                if report is not None:
                    report.errors.append(str(exc))
                continue
            text, removed = removal_text(live, table)
            if text is None:
                continue
            prog = f"{'ip6tables' if family == 6 else 'iptables'}-{self.flavor}"
            try:
                self.restore(family, text)
            except BackendError as exc:
                if report is None:
                    raise
                report.errors.append(str(exc))
                continue
            if report is not None:
                report.removed += [f"{prog} {table}: {what}" for what in removed]

    def cleanup(self) -> CleanupReport:
        report = CleanupReport()
        for family in (4, 6):
            self._remove_family(family, report)
        return report


def _chain_mismatch(where: str, chain: str, have: list, want: list) -> str:
    """One problem line for a chain of ours whose rules differ from the rendered ones."""
    extra = Counter(have) - Counter(want)
    lost = Counter(want) - Counter(have)
    return (f"{where}: chain {chain} has {len(have)} rules, {sum(extra.values())} unexpected, "
            f"{sum(lost.values())} missing (expected {len(want)})")


def jump_edits(live: Table | None, chain: str,
               wanted: list[tuple[str, ...]]) -> tuple[list[str], str]:
    """Restore lines that make ``chain`` hold exactly ``wanted`` (in order) before KUBE-SERVICES.

    Returns ([], "") when the chain is already right. Any rule jumping to one of our chains
    counts as ours (an EdgeMesh or older edgeproxy jump with another comment is replaced), so a
    restart after SIGKILL, or two copies inserted by racing writers, end with one copy.
    """
    rules = live.chains.get(chain, []) if live is not None else []
    ours = [i for i, r in enumerate(rules) if r.target in ALL_OWN_CHAINS]
    kube = next((i for i, r in enumerate(rules) if r.target == KUBE_SERVICES), None)
    have = [rules[i].key() for i in ours]
    want = [Rule(chain, spec).key() for spec in wanted]
    if have == want and (kube is None or not ours or ours[-1] < kube):
        return [], ""
    if not ours:
        why = "jumps missing"
    elif len(have) > len(want) and set(have) <= set(want):
        why = f"{len(have) - len(want)} duplicate jump(s)"
    elif have == want:
        why = "jumps after KUBE-SERVICES"
    elif not set(want) <= set(have):
        why = "jump(s) missing or altered"
    else:
        why = "jumps out of order"
    # Delete by rule spec, not number: another writer between our read and this restore then
    # cannot make us delete its rule (a spec matches only a jump to our chain).
    lines = [f"-D {chain} {format_rule(rules[i].tokens)}" for i in ours]
    remaining = [r for i, r in enumerate(rules) if i not in set(ours)]
    kube_after = next((i for i, r in enumerate(remaining) if r.target == KUBE_SERVICES), None)
    # Right before kube-proxy's jump (not rule 1: others, e.g. Calico, keep their top spot);
    # at the top when kube-proxy is not (yet) there.
    position = (kube_after + 1) if kube_after is not None else 1
    lines += [f"-I {chain} {position + n} {format_rule(spec)}" for n, spec in enumerate(wanted)]
    return lines, why


def removal_text(live: Table | None, table: str) -> tuple[str | None, list[str]]:
    """Restore text removing every rule that jumps to our chains and then the chains."""
    if live is None:
        return None, []
    lines = [f"*{table}"]
    removed: list[str] = []
    for chain, rules in live.chains.items():
        if chain in ALL_OWN_CHAINS:
            continue
        idx = [i for i, r in enumerate(rules) if r.target in ALL_OWN_CHAINS]
        for i in idx:  # by spec: safe against rules inserted meanwhile
            lines.append(f"-D {chain} {format_rule(rules[i].tokens)}")
            removed.append(f"jump {chain} -> {rules[i].target}")
    for chain in OWN_CHAINS.get(table, ()):
        if chain in live.chains:
            lines += [f"-F {chain}", f"-X {chain}"]
            removed.append(f"chain {chain} ({len(live.rules(chain))} rules)")
    if not removed:
        return None, []
    lines.append("COMMIT")
    return "\n".join(lines) + "\n", removed


def expected_line(chain: str, spec: tuple[str, ...]) -> str:
    """How iptables-save prints a rule of ours, with quotes removed (see `split_own`)."""
    return f"-A {chain} " + " ".join(spec)


def _chain_block(text: str, chain: str) -> tuple[int, int]:
    """(start, end) of the contiguous ``-A CHAIN`` lines in ``text`` (which starts with a
    newline); iptables-save prints each chain's rules together. (-1, -1) when there are none."""
    head = f"\n-A {chain} "
    start = text.find(head)
    if start < 0:
        return -1, -1
    end = start
    while text.startswith(head, end):
        nxt = text.find("\n", end + 1)
        end = len(text) if nxt < 0 else nxt
    return start + 1, end


def saved_matches(ruleset: RuleSet, family: int, table: str, saved: str) -> bool:
    """True when ``saved`` (iptables-save -t TABLE) holds every chain of ours with exactly the
    rendered rules and our jumps in place before KUBE-SERVICES.

    Cheap on purpose (it runs every period): our chains are compared as one slice of text each
    against `RuleSet.saved_block`, only the few lines of the built-in chains with our jumps are
    parsed. False means "look closer" (`plan` decides what is wrong, if anything: another
    iptables version may print a right rule differently)."""
    text = "\n" + saved
    for chain in ruleset.chain_rules(family, table):
        if f"\n:{chain} " not in text:
            return False
        head = f"\n-A {chain} "
        block = ruleset.saved_block(family, table, chain)
        start = text.find(head)
        if start < 0:
            if block:
                return False
            continue
        end = start + 1 + len(block)
        # Exactly our block, ending at a line end, and no further rule of the chain anywhere.
        if (not block or not text.startswith(block, start + 1)
                or text[end:end + 1] != "\n" or text.find(head, end) >= 0):
            return False
    for chain in dict.fromkeys(j.chain for j in ruleset.jumps(table)):
        start, end = _chain_block(text, chain)
        lines = text[start:end] if start >= 0 else ""
        if text.find(f"\n-A {chain} ", max(end, 0)) >= 0:
            return False
        live = parse_save(f"*{table}\n{lines}\nCOMMIT\n")[table]
        if jump_edits(live, chain, [j.tokens for j in ruleset.jumps(table)
                                    if j.chain == chain])[1]:
            return False
    return True


def split_own(save_text: str, table: str) -> Table:
    """Parse save output, keeping our chains' rules as quote-free raw lines.

    Parsing 20,000 rules into objects costs ~0.2 s; comparing their lines costs ~10 ms. The
    objects of our chains are only built (by the caller) when the lines differ."""
    own_lines: dict[str, list[str]] = {}
    rest = []
    for line in save_text.splitlines():
        if line.startswith("-A "):
            chain = line[3:].split(" ", 1)[0]
            if chain in ALL_OWN_CHAINS:
                own_lines.setdefault(chain, []).append(line)
                continue
        rest.append(line)
    parsed = parse_save("\n".join(rest)).get(table) or Table(table)
    parsed.raw_lines = {c: own_lines.get(c, []) for c in parsed.chains if c in ALL_OWN_CHAINS}
    parsed.raw = {c: [line.replace('"', "") for line in lines]
                  for c, lines in parsed.raw_lines.items()}
    return parsed
