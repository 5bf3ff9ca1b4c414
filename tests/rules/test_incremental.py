"""Incremental writes: the edit lines rebuild the new chain exactly (simulated for many random
changes, and for real through iptables-restore in a namespace), and give up when they should."""

from __future__ import annotations

import random
import subprocess

import pytest

from edgeproxy.model import ServicePort, ServicePortKey, Protocol
from edgeproxy.rules.incremental import chain_edit_lines, incremental_restore_text
from edgeproxy.rules.render import PORTALS_CONTAINER, PORTALS_HOST, render_rules
from tests.rules import states


def simulate(chain: list[str], lines: list[str]) -> list[str]:
    """iptables semantics of -D CHAIN RULE (first match) and -I CHAIN N RULE (1-based)."""
    chain = list(chain)
    for line in lines:
        op, _, rest = line.split(" ", 2)
        if op == "-D":
            chain.remove(rest)
        else:
            position, rule = rest.split(" ", 1)
            assert 1 <= int(position) <= len(chain) + 1, line
            chain.insert(int(position) - 1, rule)
    return chain


@pytest.mark.parametrize("seed", range(200))
def test_random_small_changes_rebuild_the_new_chain_exactly(seed):
    rng = random.Random(seed)
    universe = [f"rule-{i:04d}" for i in range(400)]
    old = sorted(rng.sample(universe, rng.randint(0, 120)))
    kept = [r for r in old if rng.random() > 0.05]
    new = sorted(set(kept) | set(rng.sample(universe, rng.randint(0, 6))))
    lines = chain_edit_lines("C", old, new)
    if lines is None:  # only allowed when the change is large
        assert len(set(old) ^ set(new)) > max(8, 0.25 * max(len(old), len(new)))
        return
    assert simulate(old, lines) == new
    assert len(lines) == len(set(old) ^ set(new))


def test_gives_up_on_reordering_duplicates_and_large_changes():
    assert chain_edit_lines("C", ["a", "b", "c"], ["b", "a", "c"]) is None
    assert chain_edit_lines("C", ["a", "a"], ["a"]) is None
    old = [f"r{i}" for i in range(100)]
    assert chain_edit_lines("C", old, old[:60]) is None
    assert chain_edit_lines("C", old, old[:99]) == ["-D C r99"]


def _with(ports, name, vip, port=80):
    key = ServicePortKey("default", name, "", Protocol.TCP)
    return {**ports, key: ServicePort(key, port, (vip,))}


def test_restore_text_for_one_added_service_touches_only_its_rules():
    ports = states.example_ports()
    old = render_rules(ports, states.proxy_ports_for(ports), states.LISTEN)
    grown = _with(ports, "api", "198.19.0.77")
    api = ServicePortKey("default", "api", "", Protocol.TCP)
    new = render_rules(grown, {**states.proxy_ports_for(ports), api: 62000}, states.LISTEN)
    text = incremental_restore_text(old, new, 4, "nat")
    assert text is not None and text.startswith("*nat\n") and text.endswith("COMMIT\n")
    lines = text.splitlines()[1:-1]
    assert [line.split()[:2] for line in lines] == [["-I", PORTALS_CONTAINER],
                                                   ["-I", PORTALS_HOST]]
    assert all("198.19.0.77/32" in line and ":62000" in line for line in lines)
    assert ":" + PORTALS_CONTAINER not in text  # no chain line: that would flush the chain
    assert incremental_restore_text(new, new, 4, "nat") == ""
    assert incremental_restore_text(old, new, 4, "filter") == ""


def test_listen_or_family_change_needs_a_full_write():
    ports = states.example_ports()
    old = render_rules(ports, states.proxy_ports_for(ports), states.LISTEN)
    full = states.full_ports()  # adds IPv6
    new = render_rules(full, states.proxy_ports_for(full), states.LISTEN)
    assert incremental_restore_text(old, new, 4, "nat") is None


def _save_chain(chain: str) -> list[str]:
    out = subprocess.run(["iptables-save", "-t", "nat"], capture_output=True, text=True,
                         check=True).stdout
    return [line for line in out.splitlines() if line.startswith(f"-A {chain} ")]


@pytest.mark.netns
def test_incremental_restore_in_a_namespace_equals_a_full_write(netns):
    """Real iptables-restore: after full write of 300 services, add 3 and remove 2
    incrementally; the live chains are line for line what a full write gives."""
    base = states.example_ports()
    for i in range(300):
        base = _with(base, f"svc{i:03d}", f"198.19.{1 + i // 200}.{1 + i % 200}")
    proxy = {k: 20000 + i for i, k in enumerate(sorted(base))}
    old = render_rules(base, proxy, states.LISTEN)
    changed = {k: v for k, v in base.items() if k.name not in ("svc010", "svc200")}
    for name, vip in (("new-a", "198.19.9.1"), ("new-b", "198.19.9.2"), ("zz", "198.19.9.3")):
        changed = _with(changed, name, vip)
    proxy2 = {k: proxy.get(k, 30000 + i) for i, k in enumerate(sorted(changed))}
    new = render_rules(changed, proxy2, states.LISTEN)
    with netns.entered():
        subprocess.run(["iptables-restore", "--noflush"], input=old.restore_text(4, "nat"),
                       text=True, check=True)
        text = incremental_restore_text(old, new, 4, "nat")
        assert text is not None and text.count("\n-") == 10  # 2x2 deletes + 3x2 inserts
        subprocess.run(["iptables-restore", "--noflush"], input=text, text=True, check=True)
        for chain in (PORTALS_CONTAINER, PORTALS_HOST):
            assert "\n".join(_save_chain(chain)) == new.saved_block(4, "nat", chain)
        # A chain changed behind our back: the transaction fails as a whole, nothing applied.
        subprocess.run(["iptables", "-t", "nat", "-F", PORTALS_HOST], check=True)
        again = incremental_restore_text(new, old, 4, "nat")
        result = subprocess.run(["iptables-restore", "--noflush"], input=again, text=True,
                                capture_output=True)
        assert result.returncode != 0
        assert "\n".join(_save_chain(PORTALS_CONTAINER)) == new.saved_block(
            4, "nat", PORTALS_CONTAINER)
