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

from ..render import NFT_TABLE, RuleSet, parse_nft_chains
from .. import nfnetlink
from edgeproxy.tools import LocalRunner, Runner

from .base import BackendError, CleanupReport, netlink_target, off_hub, only_our_writes

log = logging.getLogger(__name__)

FAMILIES = {4: "ip", 6: "ip6"}


class NftablesBackend:
    name = "nftables"

    def __init__(self, runner: Runner | None = None) -> None:
        self.run = runner or LocalRunner()
        self._netlink, self._netns = netlink_target(self.run)
        # Generation of the last clean check, and per family the raw-rule digests of our
        # chains when they were known right, each with the rule set it was checked against.
        self._clean: tuple[int, RuleSet] | None = None
        self._verified: dict[int, tuple[dict[str, str], RuleSet]] = {}
        self._written: set[int] = set()  # families written by us since their last listing
        self._count_only: set[tuple[int, str]] = set()  # chains nft prints unlike our text
        self.checks_skipped = 0  # answered by the unchanged generation alone
        self.checks_compared = 0  # rule digest read and compared
        self.checks_listed = 0  # `nft list table` needed (after a write, or something differs)
        self.writes_total = 0  # successful nft transactions that change the ruleset

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
        check_and_repair), so neither this write nor a repair waits for a digest read."""
        self._clean = None
        before, writes = self.generation(), self.writes_total
        for family in (4, 6):
            if family in ruleset.families:
                self._write(ruleset, family)
            else:
                self._delete(family, CleanupReport())
        self._trust_own_writes(ruleset, before, writes)

    def _trust_own_writes(self, ruleset: RuleSet, before: int | None, writes: int) -> None:
        after = self.generation()
        if only_our_writes(before, after, self.writes_total - writes):
            self._clean = (after, ruleset)
            # The tables are exactly our text: nothing to learn about nft's formatting.
            self._written.clear()

    def _write(self, ruleset: RuleSet, family: int) -> None:
        """Replace our table of ``family`` in one transaction."""
        self._verified.pop(family, None)
        self._nft("-f", "-", input=ruleset.nft_text(family))
        self._written.add(family)

    def generation(self) -> int | None:
        return nfnetlink.generation(self._netns) if self._netlink else None

    def _digests(self, ruleset: RuleSet, family: int) -> dict[str, str] | None:
        if not self._netlink:
            return None
        return off_hub(self.run, nfnetlink.chain_digests, family, NFT_TABLE,
                       list(ruleset.nft_chain_rules(family)), self._netns)

    def _verify(self, ruleset: RuleSet, family: int) -> list[str]:
        """Problems of our table of ``family``. Compares the raw-rule digests of our chains
        with those known right (after our own write, or a listing that found it right);
        lists the table only when none are known."""
        digests = self._digests(ruleset, family)
        known = self._verified.pop(family, None)
        if digests is not None:
            self.checks_compared += 1
            if known is not None and known[1] is ruleset:
                if known[0] == digests:
                    self._verified[family] = known
                    return []
                # Our table is ours alone: rules that changed since they were known right
                # were changed behind our back. Rewrite without listing (0.8-1.7 s at 10,000).
                where = f"nftables table {FAMILIES[family]} {NFT_TABLE}"
                return [f"{where}: chain {chain} " + ("missing" if digest == "absent" else
                                                      "changed behind our back")
                        for chain, digest in digests.items() if known[0].get(chain) != digest]
        self.checks_listed += 1
        problems = self._problems(ruleset, family)
        if not problems and digests is not None:
            # The digests were read before the listing: if the table changed in between, the
            # next check sees other digests and rewrites.
            self._verified[family] = (digests, ruleset)
        return problems

    def check_and_repair(self, ruleset: RuleSet) -> list[str]:
        """Repairs made. Every call finds every kind of damage (table, chain or rule gone,
        added or changed) at a cost bounded by one dump of our rules: unchanged nf_tables
        generation since the last clean check, nothing to do (0.1 ms); else the raw-rule
        digest of our chains against the last verified one (~0.15 s at 20,000 rules); a full
        listing only when there is none (a write of ours raced with another writer)."""
        generation = self.generation()
        if (generation is not None and self._clean is not None
                and self._clean[0] == generation and self._clean[1] is ruleset):
            for family in ruleset.families:
                known = self._verified.get(family)
                if known is None or known[1] is not ruleset:
                    # Vouched for by our own write: the unchanged generation proves these
                    # digests are of what we wrote; a later foreign write is judged by them.
                    digests = self._digests(ruleset, family)
                    if digests is not None and self.generation() == generation:
                        self._verified[family] = (digests, ruleset)
            self.checks_skipped += 1
            return []
        self._clean = None
        repairs = []
        before, writes = generation, self.writes_total
        for family in ruleset.families:
            problems = self._verify(ruleset, family)
            if problems:
                self._write(ruleset, family)
                repairs += problems
        if not repairs and generation is not None:
            self._clean = (generation, ruleset)
        elif repairs:
            # Our repair writes vouch for the tables the same way as apply's (the digests
            # were read before them and did not write).
            self._trust_own_writes(ruleset, before, writes)
        return repairs

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
