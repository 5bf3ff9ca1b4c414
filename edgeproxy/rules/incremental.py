"""Incremental iptables writes: the few lines that turn the previous rule set into the next.

A full write rebuilds our chains: with 10,000 services that is 20,000 rules through
iptables-restore, hundreds of milliseconds to seconds (iptables-nft), for a reload that added
one Service. When the chains were last written by us from ``previous`` (the keeper knows), one
changed service is a handful of ``-D CHAIN <rule>`` and ``-I CHAIN <position> <rule>`` lines in
one ``iptables-restore --noflush`` transaction, which keeps every other rule and its counters.

The edit keeps the rendered order exactly (deletes first, then inserts at their final
positions, ascending), so the periodic check that compares the live chain with the rendering
line by line finds nothing to repair. It is only a shortcut: it gives up (returns None) when
the change is large, a chain holds the same rule twice or the common rules changed order, and
the caller then does the full write; if the live chain was changed behind our back, the
transaction fails as a whole (a ``-D`` finds no rule) and the caller falls back the same way.

Pure: no I/O.
"""

from __future__ import annotations

from typing import Callable, Hashable, Sequence, TypeVar

from .iptables_text import format_rule
from .render import RuleSet

# Above this share of a chain's rules changing, a rewrite of the chain is as cheap and simpler.
MAX_CHANGED_SHARE = 0.25


Rule = TypeVar("Rule", bound=Hashable)


def chain_edit_lines(chain: str, old: Sequence[Rule], new: Sequence[Rule],
                     text: Callable[[Rule], str] = str,
                     max_changed_share: float = MAX_CHANGED_SHARE) -> list[str] | None:
    """restore lines turning the chain's rules ``old`` into ``new`` (``text`` formats one
    rule; only changed rules are formatted); None when that is not a small, order-preserving
    edit."""
    old_set, new_set = set(old), set(new)
    if len(old_set) != len(old) or len(new_set) != len(new):
        return None  # a rule twice: -D would remove an arbitrary copy
    removed = [rule for rule in old if rule not in new_set]
    added = [(index, rule) for index, rule in enumerate(new) if rule not in old_set]
    if len(removed) + len(added) > max(8, max_changed_share * max(len(old), len(new))):
        return None
    kept_old = [rule for rule in old if rule in new_set]
    kept_new = [rule for rule in new if rule in old_set]
    if kept_old != kept_new:
        return None  # the common rules changed order: not a pure insert/delete
    lines = [f"-D {chain} {text(rule)}" for rule in removed]
    # After the deletes the chain holds kept_old; inserting at each rule's final (1-based)
    # position in ascending order rebuilds ``new`` exactly: everything before it is in place.
    lines += [f"-I {chain} {index + 1} {text(rule)}" for index, rule in added]
    return lines


def incremental_restore_text(previous: RuleSet, ruleset: RuleSet, family: int,
                             table: str) -> str | None:
    """``iptables-restore --noflush`` text for the difference in ``table``: "" when nothing
    changed, None when only a full write will do (see the module docstring)."""
    if previous.listen != ruleset.listen or previous.families != ruleset.families:
        return None
    old_chains = previous.chain_rules(family, table)
    new_chains = ruleset.chain_rules(family, table)
    if old_chains.keys() != new_chains.keys():
        return None
    lines: list[str] = []
    for chain, specs in new_chains.items():
        old_specs = old_chains[chain]
        if old_specs == specs:
            continue
        edit = chain_edit_lines(chain, old_specs, specs, format_rule)
        if edit is None:
            return None
        lines += edit
    if not lines:
        return ""
    return "\n".join([f"*{table}", *lines, "COMMIT"]) + "\n"
