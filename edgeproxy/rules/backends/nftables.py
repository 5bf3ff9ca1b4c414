"""The ``nftables`` backend: a table of edgeproxy's own, replaced in one ``nft -f`` transaction.

When kube-proxy runs in nftables mode it owns ``table ip kube-proxy``; positions in iptables'
built-in chains decide nothing against it. Our nat base chains hook prerouting/output at
priority ``dstnat - 10`` and so run before kube-proxy's dstnat chains; the first NAT binding of
a flow wins. We never name kube-proxy's table. The table comment carries a digest of what we
rendered, so a full check is one ``nft list table`` compared with what we rendered.

That listing costs most of a second at 10,000 services, so the periodic check avoids it (see
`check_and_repair`): the nf_tables generation id says whether anything was written at all, and
per-chain digests of the kernel's raw rule messages (nfnetlink.py) say whether our chains are
still those our own write (or a listing) established as right.
"""

from __future__ import annotations

import logging

from ..render import NFT_TABLE, RuleSet
from .. import nfnetlink
from edgeproxy.tools import LocalRunner, Runner

from .base import BackendError, CleanupReport, netlink_target
from .check import StagedCheck

log = logging.getLogger(__name__)

FAMILIES = {4: "ip", 6: "ip6"}


class NftablesBackend:
    name = "nftables"

    def __init__(self, runner: Runner | None = None) -> None:
        self.run = runner or LocalRunner()
        self._netlink, self._netns = netlink_target(self.run)
        self._written: set[int] = set()  # families written by us since their last listing
        self._count_only: set[tuple[int, str]] = set()  # chains nft prints unlike our text
        self.writes_total = 0  # successful nft transactions that change the ruleset
        # See check_and_repair. A write that vouches for the tables is exactly our text:
        # nothing to learn about nft's formatting from the next listing.
        self.check = StagedCheck(self.run, self.generation, self._digests,
                                 lambda: self.writes_total, self._repair_changed,
                                 self._list_and_repair, trusted=self._written.clear)

    def _nft(self, *args: str, input: str | None = None, check: bool = True):
        res = self.run(["nft", *args], input=input)
        if check and res.returncode != 0:
            raise BackendError(f"nft {' '.join(args)} failed ({res.returncode}): "
                               f"{res.stderr.strip()}")
        if res.returncode == 0 and args[0] in ("-f", "delete"):
            self.writes_total += 1
        return res

    def read(self, family: int) -> dict | None:
        """{"comment": str|None, "counts": {chain: n}, "rules": {chain: [line]}} of our table,
        None when absent.

        The text listing is parsed, not ``-j``: nft 1.0.6's JSON omits the table comment (and
        takes half as long again)."""
        res = self._nft("list", "table", FAMILIES[family], NFT_TABLE, check=False)
        if res.returncode != 0:
            if "No such file or directory" in res.stderr or "does not exist" in res.stderr:
                return None
            raise BackendError(f"nft list table {FAMILIES[family]} {NFT_TABLE} failed: "
                               f"{res.stderr.strip()}")
        comment = None
        for line in res.stdout.splitlines():
            s = line.strip()
            if s.startswith("comment "):
                comment = s[len("comment "):].strip('"')
                break
            if s.startswith("chain "):
                break
        rules = parse_nft_chains(res.stdout)
        return {"comment": comment, "counts": {c: len(r) for c, r in rules.items()},
                "rules": rules}

    def _problems(self, ruleset: RuleSet, family: int) -> list[str]:
        live = self.read(family)
        where = f"nftables table {FAMILIES[family]} {NFT_TABLE}"
        written = family in self._written
        self._written.discard(family)
        if live is None:
            return [f"{where} missing"]
        problems = []
        if live["comment"] != f"edgeproxy {ruleset.nft_digest(family)}":
            problems.append(f"{where} holds another rule set ({live['comment']!r})")
        if live["counts"] != ruleset.nft_rule_counts(family):
            problems.append(f"{where}: rule counts {live['counts']} differ from "
                            f"{ruleset.nft_rule_counts(family)}")
            return problems
        # Same counts: compare the rules themselves, so a rule replaced by another is seen.
        # nft prints our KUBE-* chains exactly as rendered; a chain it prints differently
        # (the guard's `ct status & dnat == 0` comes back as `ct status ! dnat`) is noticed
        # on the first listing after a write of ours and from then on compared by count only,
        # so another nft version's formatting cannot cause a repair every period.
        for chain, wanted in ruleset.nft_chain_rules(family).items():
            if (family, chain) in self._count_only or live["rules"].get(chain) == wanted:
                continue
            if written:
                self._count_only.add((family, chain))
                log.info("%s: nft prints chain %s differently from how it was written; "
                         "checking its rule count only", where, chain)
                continue
            differ = sum(a != b for a, b in zip(live["rules"][chain], wanted))
            problems.append(f"{where}: chain {chain}: {differ} rule(s) differ from the "
                            "rendered ones")
        return problems

    def apply(self, ruleset: RuleSet, previous: RuleSet | None = None) -> None:
        """One atomic replacement of our table per family (``previous`` is not needed).

        When the nf_tables generation moved by exactly our own transactions, nobody else
        wrote in between: the tables are what we wrote, and the next periodic check is
        answered by the generation alone; it also takes the reference digests then (see
        check.py), so neither this write nor a repair waits for a digest read."""
        self.check.write(ruleset, lambda: self._write_all(ruleset))

    def _write_all(self, ruleset: RuleSet) -> None:
        for family in (4, 6):
            if family in ruleset.families:
                self._write(ruleset, family)
            else:
                self._delete(family, CleanupReport())

    def _write(self, ruleset: RuleSet, family: int) -> None:
        """Replace our table of ``family`` in one transaction."""
        self._nft("-f", "-", input=ruleset.nft_text(family))
        self._written.add(family)

    def generation(self) -> int | None:
        return nfnetlink.generation(self._netns) if self._netlink else None

    def _digests(self, ruleset: RuleSet) -> dict[tuple[int, str], str] | None:
        """Raw-rule digests of our chains, per (family, chain)."""
        if not self._netlink:
            return None
        result: dict[tuple[int, str], str] = {}
        for family in ruleset.families:
            per_chain = nfnetlink.chain_digests(family, NFT_TABLE,
                                                list(ruleset.nft_chain_rules(family)),
                                                self._netns)
            if per_chain is None:
                return None
            result.update({(family, chain): d for chain, d in per_chain.items()})
        return result

    def _repair_changed(self, ruleset: RuleSet, changed: set[tuple[int, str]],
                        digests: dict[tuple[int, str], str]) -> list[str]:
        """Our table is ours alone: rules that changed since they were known right were
        changed behind our back. Rewrite those families without listing (0.8-1.7 s at
        10,000 services)."""
        repairs = []
        for family, chain in (key for key in digests if key in changed):  # in chain order
            where = f"nftables table {FAMILIES[family]} {NFT_TABLE}"
            repairs.append(f"{where}: chain {chain} " + (
                "missing" if digests[(family, chain)] == "absent" else "changed behind our back"))
        for family in sorted({family for family, _ in changed}):
            self._write(ruleset, family)
        return repairs

    def _list_and_repair(self, ruleset: RuleSet) -> list[str]:
        """The full check: list each family's table, compare, rewrite it when it differs."""
        repairs = []
        for family in ruleset.families:
            problems = self._problems(ruleset, family)
            if problems:
                self._write(ruleset, family)
                repairs += problems
        return repairs

    def check_and_repair(self, ruleset: RuleSet) -> list[str]:
        """Repairs made. Every call finds every kind of damage (table, chain or rule gone,
        added or changed) at a cost bounded by one dump of our rules (check.py): unchanged
        nf_tables generation since the last clean check, nothing to do (0.1 ms); else the
        raw-rule digests of our chains against the last verified ones (~0.15 s at 20,000
        rules); a full listing only when there are none (a write of ours raced with another
        writer)."""
        return self.check.check_and_repair(ruleset)

    def diagnose(self, ruleset: RuleSet | None) -> list[str]:
        if ruleset is not None:
            return [p for fam in ruleset.families for p in self._problems(ruleset, fam)]
        return [] if self.read(4) is not None else [
            f"nftables table ip {NFT_TABLE} missing"]

    def _delete(self, family: int, report: CleanupReport) -> None:
        try:
            if self.read(family) is None:
                return
            self._nft("delete", "table", FAMILIES[family], NFT_TABLE)
            report.removed.append(f"nftables table {FAMILIES[family]} {NFT_TABLE}")
        except (BackendError, ValueError) as exc:
            report.errors.append(str(exc))

    def cleanup(self) -> CleanupReport:
        report = CleanupReport()
        for family in (4, 6):
            self._delete(family, report)
        return report


def parse_nft_chains(listing: str) -> dict[str, list[str]]:
    """Rule lines per chain of ``nft list table`` output (stripped; the table's ``comment``
    and a base chain's ``type`` line are not rules)."""
    result: dict[str, list[str]] = {}
    chain: str | None = None
    for line in listing.splitlines():
        s = line.strip()
        if s.startswith("chain ") and s.endswith("{"):
            chain = s.split()[1]
            result[chain] = []
        elif s == "}":
            chain = None
        elif chain is not None and s and not s.startswith("type "):
            result[chain].append(s)
    return result
