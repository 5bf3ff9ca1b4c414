"""The ``nftables`` backend: a table of edgeproxy's own, replaced in one ``nft -f`` transaction.

When kube-proxy runs in nftables mode it owns ``table ip kube-proxy``; positions in iptables'
built-in chains decide nothing against it. Our nat base chains hook prerouting/output at
priority ``dstnat - 10`` and so run before kube-proxy's dstnat chains; the first NAT binding of
a flow wins. We never name kube-proxy's table. The table comment carries a digest of what we
rendered, so a check is one ``nft -j list table`` plus a comparison of digest and rule counts.
"""

from __future__ import annotations

import logging

from ..render import NFT_TABLE, RuleSet
from .base import BackendError, CleanupReport, LocalRunner, Runner

log = logging.getLogger(__name__)

FAMILIES = {4: "ip", 6: "ip6"}


class NftablesBackend:
    name = "nftables"

    def __init__(self, runner: Runner | None = None) -> None:
        self.run = runner or LocalRunner()

    def _nft(self, *args: str, input: str | None = None, check: bool = True):
        res = self.run(["nft", *args], input=input)
        if check and res.returncode != 0:
            raise BackendError(f"nft {' '.join(args)} failed ({res.returncode}): "
                               f"{res.stderr.strip()}")
        return res

    def read(self, family: int) -> dict | None:
        """{"comment": str|None, "counts": {chain: rules}} of our table, None when absent.

        The text listing is parsed, not ``-j``: nft 1.0.6's JSON omits the table comment."""
        res = self._nft("list", "table", FAMILIES[family], NFT_TABLE, check=False)
        if res.returncode != 0:
            if "No such file or directory" in res.stderr or "does not exist" in res.stderr:
                return None
            raise BackendError(f"nft list table {FAMILIES[family]} {NFT_TABLE} failed: "
                               f"{res.stderr.strip()}")
        comment, counts, chain = None, {}, None
        for line in res.stdout.splitlines():
            s = line.strip()
            if not s or s.startswith("table "):
                continue
            if chain is None and s.startswith("comment "):
                comment = s[len("comment "):].strip('"')
            elif s.startswith("chain ") and s.endswith("{"):
                chain = s.split()[1]
                counts[chain] = 0
            elif s == "}":
                chain = None
            elif chain is not None and not s.startswith("type "):
                counts[chain] += 1
        return {"comment": comment, "counts": counts}

    def _problems(self, ruleset: RuleSet, family: int) -> list[str]:
        live = self.read(family)
        where = f"nftables table {FAMILIES[family]} {NFT_TABLE}"
        if live is None:
            return [f"{where} missing"]
        problems = []
        if live["comment"] != f"edgeproxy {ruleset.nft_digest(family)}":
            problems.append(f"{where} holds another rule set ({live['comment']!r})")
        if live["counts"] != ruleset.nft_rule_counts(family):
            problems.append(f"{where}: rule counts {live['counts']} differ from "
                            f"{ruleset.nft_rule_counts(family)}")
        return problems

    def apply(self, ruleset: RuleSet) -> None:
        for family in (4, 6):
            if family in ruleset.families:
                self._nft("-f", "-", input=ruleset.nft_text(family))
            else:
                self._delete(family, CleanupReport())

    def quick_check(self, ruleset: RuleSet) -> bool:
        """True when our table and all its chains exist (``nft list chains``: a few ms, where
        listing a 20,000-rule table takes most of a second)."""
        wanted = set(ruleset.nft_rule_counts(4))
        for family in ruleset.families:
            res = self._nft("list", "chains", FAMILIES[family], check=False)
            if res.returncode != 0:
                return False
            found, in_ours = set(), False
            for line in res.stdout.splitlines():
                s = line.strip()
                if s.startswith("table "):
                    in_ours = s.split()[2] == NFT_TABLE
                elif in_ours and s.startswith("chain "):
                    found.add(s.split()[1])
            if not wanted <= found:
                return False
        return True

    def check_and_repair(self, ruleset: RuleSet, quick: bool = False) -> list[str]:
        if quick and self.quick_check(ruleset):
            return []
        repairs = []
        for family in ruleset.families:
            problems = self._problems(ruleset, family)
            if problems:
                self._nft("-f", "-", input=ruleset.nft_text(family))
                repairs += problems
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
