#!/usr/bin/env python3
"""Benchmark: applying edgeproxy's capture rules for 10,000 service ports, per backend.

Each measurement runs in a fresh network namespace (nothing on the host changes) and is set
against a floor measured in the same run on the same text:
  * floor       `iptables-{legacy,nft}-restore --noflush` / `nft -f` of the rendered text alone
  * full sync   backend.apply(ruleset) on an empty namespace (reads the live table, plans the
                jumps, restores); target < 1 s and < 2x the floor
  * one change  backend.apply() with one service's port changed among N; floor = restore of
                that same text onto the populated table (legacy rewrites the whole table)
  * edit        the same change as the keeper writes it, knowing what it wrote before
                (apply(previous=...): -D/-I lines only; iptables backends)
  * check       the keeper's per-period check of every rule, with its share of one core at
                the default 1 s period: at rest (nothing written since the last check: nft
                flavour and nftables answer with the nf_tables generation, legacy with a digest
                of its table blob) and busy (kube-proxy wrote to its own chains since: legacy
                runs iptables-save and compares, nft flavour and nftables compare raw-rule
                digests of our chains); "1st after write" is the check after each write of
                ours, which establishes what "right" is (iptables-save; nftables: our own
                write already did, with the generation as witness)
  * listing     nftables only: `nft list table` of our table, the full check the digests avoid
  * repairs     one keeper check after each kind of damage: detect + repair time, the part of
                "repaired within check period + 1 s" beyond the period (kube-proxy's jump put
                ahead of ours; our chain deleted (nftables: our table); our chain emptied with
                its jumps intact)
  * python-iptables: the same DNAT rules built as iptc objects, one commit (legacy only), the
                alternative we did not take
  * linearity   full sync at N and N/10: the ratio should stay near 10 (not grow faster)

Usage: sudo .venv/bin/python bench/rules_apply.py [--services 10000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgeproxy.demo.kube_proxy import Iptables, StandInKubeProxy  # noqa: E402
from edgeproxy.demo.netns import NetNS, netns_unavailable_reason  # noqa: E402
from edgeproxy.model import ListenAddresses, Protocol, ServicePort, ServicePortKey  # noqa: E402
from edgeproxy.rules.backends import make_backend  # noqa: E402
from edgeproxy.rules.render import render_rules  # noqa: E402
from edgeproxy.tools import namespace_runner  # noqa: E402

LISTEN = ListenAddresses()


def make_state(n: int, changed: bool = False):
    ports, proxy = {}, {}
    for i in range(n):
        key = ServicePortKey("bench", f"svc-{i}", "", Protocol.TCP if i % 4 else Protocol.UDP)
        port = 8080 if changed and i == n // 2 else 80
        ip = f"198.19.{i // 250}.{i % 250 + 1}"
        ports[key] = ServicePort(key, port, (ip,))
        proxy[key] = 61000 + i % 4000
    return ports, proxy


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def best(fn_setup, fn, repeat: int) -> float:
    """Median over `repeat` fresh namespaces; fn_setup(ns) returns the callable's argument."""
    times = []
    for _ in range(repeat):
        with NetNS("bench") as ns:
            arg = fn_setup(ns)
            times.append(timed(lambda: fn(ns, arg)))
    return statistics.median(times)


def restore_floor(ns: NetNS, flavor: str, text: str) -> None:
    ns.run([f"iptables-{flavor}-restore", "--noflush", "-w", "5"], input=text, timeout=120)


def bench_iptables(flavor: str, rs, rs_changed, repeat: int) -> dict[str, float]:
    text = rs.restore_text(4, "nat") + rs.restore_text(4, "filter")
    changed_text = rs_changed.restore_text(4, "nat")
    r: dict[str, float] = {}
    r["floor"] = best(lambda ns: None, lambda ns, _: restore_floor(ns, flavor, text), repeat)
    r["full"] = best(lambda ns: make_backend(flavor, namespace_runner(ns.name)),
                     lambda ns, b: b.apply(rs), repeat)

    def populated(ns):
        b = make_backend(flavor, namespace_runner(ns.name))
        b.apply(rs)
        return b
    r["change_floor"] = best(populated,
                             lambda ns, _: restore_floor(ns, flavor, changed_text), repeat)
    r["change"] = best(populated, lambda ns, b: b.apply(rs_changed), repeat)
    # What the keeper does: it passes what it last wrote, so only the difference is written.
    r["edit"] = best(populated, lambda ns, b: b.apply(rs_changed, previous=rs), repeat)

    r.update(keeper_costs(flavor, rs, repeat))
    return r


def _nat(ns: NetNS, flavor: str, *args: str) -> None:
    Iptables(ns, flavor)("-t", "nat", *args)


# kube-proxy syncing its own chain while we are checking ours (the "busy" figure)
KUBE_PROXY_SERVICE = ("198.19.255.1", 80, "198.18.1.11", 8080)

DAMAGE = {  # what each kind of damage runs in the namespace, per backend
    "jump-moved": {
        # kube-proxy (re)starts after us and inserts its jump at rule 1 of both chains.
        "iptables": lambda ns, fl: StandInKubeProxy(ns, fl).jump_ahead(),
        "nftables": None,  # priorities, not positions: nothing to move
    },
    "chain-deleted": {
        "iptables": lambda ns, fl: [
            _nat(ns, fl, "-D", "PREROUTING", "-m", "comment", "--comment",
                 "handle ClusterIPs; NOTE: this must be before the NodePort rules",
                 "-j", "KUBE-PORTALS-CONTAINER"),
            _nat(ns, fl, "-F", "KUBE-PORTALS-CONTAINER"),
            _nat(ns, fl, "-X", "KUBE-PORTALS-CONTAINER")],
        "nftables": lambda ns, fl: ns.run(["nft", "delete", "table", "ip", "edgeproxy"]),
    },
    "chain-emptied": {
        "iptables": lambda ns, fl: _nat(ns, fl, "-F", "KUBE-PORTALS-CONTAINER"),
        "nftables": lambda ns, fl: ns.run(["nft", "flush", "chain", "ip", "edgeproxy",
                                           "KUBE-PORTALS-CONTAINER"]),
    },
}


def keeper_costs(name: str, rs, repeat: int) -> dict[str, float]:
    """Per-period check and repair figures, medians over `repeat` namespaces (one namespace
    serves all of them: each repair restores the state the next measurement starts from)."""
    samples: dict[str, list[float]] = {}
    kind = "nftables" if name == "nftables" else "iptables"
    for _ in range(repeat):
        with NetNS("bench") as ns:
            b = make_backend(name, namespace_runner(ns.name))
            b.apply(rs)
            # The first check after a write establishes what "right" is (iptables: a save).
            samples.setdefault("first", []).append(timed(lambda: b.check_and_repair(rs)))
            samples.setdefault("rest", []).append(timed(lambda: b.check_and_repair(rs)))
            # Someone else writes (kube-proxy syncing its own chains): the nf_tables generation
            # moves; legacy's table digest too. What answers then is the "busy" figure.
            if name == "nftables":
                ns.run(["nft", "add", "table", "ip", "kube-proxy"])
            else:
                StandInKubeProxy(ns, name).sync([KUBE_PROXY_SERVICE])
            samples.setdefault("busy", []).append(timed(lambda: b.check_and_repair(rs)))
            if name == "nftables":
                samples.setdefault("listing", []).append(timed(lambda: b.read(4)))
            for damage, how in DAMAGE.items():
                if how[kind] is None:
                    continue
                b.check_and_repair(rs)  # clean and settled again
                how[kind](ns, name)
                repairs: list[str] = []
                samples.setdefault(damage, []).append(
                    timed(lambda: repairs.extend(b.check_and_repair(rs))))
                if not repairs or b.check_and_repair(rs):
                    raise SystemExit(f"{name}: {damage} was not repaired by one check")
    return {k: statistics.median(v) for k, v in samples.items()}


def bench_nftables(rs, rs_changed, repeat: int) -> dict[str, float]:
    text = rs.nft_text(4)
    r: dict[str, float] = {}
    r["floor"] = best(lambda ns: None,
                      lambda ns, _: ns.run(["nft", "-f", "-"], input=text, timeout=120), repeat)
    r["full"] = best(lambda ns: make_backend("nftables", namespace_runner(ns.name)),
                     lambda ns, b: b.apply(rs), repeat)

    def populated(ns):
        b = make_backend("nftables", namespace_runner(ns.name))
        b.apply(rs)
        return b
    changed_text = rs_changed.nft_text(4)
    r["change_floor"] = best(populated, lambda ns, _: ns.run(["nft", "-f", "-"],
                                                            input=changed_text), repeat)
    r["change"] = best(populated, lambda ns, b: b.apply(rs_changed), repeat)

    r.update(keeper_costs("nftables", rs, repeat))
    return r


def bench_python_iptables(ports, proxy) -> float:
    """The same container-chain DNAT rules as python-iptables objects, committed once."""
    import iptc

    with NetNS("bench") as ns, ns.entered():
        start = time.perf_counter()
        table = iptc.Table(iptc.Table.NAT)
        table.autocommit = False
        chain = table.create_chain("KUBE-PORTALS-CONTAINER")
        for key in sorted(ports):
            sp = ports[key]
            rule = iptc.Rule()
            rule.dst = f"{sp.cluster_ips[0]}/32"
            rule.protocol = key.protocol.value.lower()
            comment = rule.create_match("comment")
            comment.comment = key.comment
            match = rule.create_match(rule.protocol)
            match.dport = str(sp.port)
            target = rule.create_target("DNAT")
            target.to_destination = f"{LISTEN.ipv4}:{proxy[key]}"
            chain.append_rule(rule)
        table.commit()
        table.autocommit = True
        elapsed = time.perf_counter() - start
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--services", type=int, default=10000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-python-iptables", action="store_true")
    args = parser.parse_args()
    reason = netns_unavailable_reason()
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    n = args.services
    ports, proxy = make_state(n)
    changed_ports, _ = make_state(n, changed=True)
    render_time = timed(lambda: render_rules(ports, proxy, LISTEN))
    rs = render_rules(ports, proxy, LISTEN)
    rs_changed = render_rules(changed_ports, proxy, LISTEN)
    small_ports, small_proxy = make_state(n // 10)
    rs_small = render_rules(small_ports, small_proxy, LISTEN)
    rules = sum(len(r) for _, r in rs.chains[(4, "nat")])
    print(f"{n} service ports -> {rules} nat rules; pure render {render_time * 1000:.0f} ms")
    print(f"{'backend':10} {'floor':>8} {'full':>8} {'ratio':>6} {'chg-floor':>9} {'change':>8} "
          f"{'ratio':>6} {'edit':>6} {'N/(N/10)':>8}")
    results = {}
    ms = lambda s: f"{s * 1000:.0f}ms"  # noqa: E731
    for name in ("legacy", "nft", "nftables"):
        if name == "nftables":
            r = bench_nftables(rs, rs_changed, args.repeat)
        else:
            r = bench_iptables(name, rs, rs_changed, args.repeat)
        small = best(lambda ns: make_backend(name, namespace_runner(ns.name)),
                     lambda ns, b: b.apply(rs_small), args.repeat)
        results[name] = r
        print(f"{name:10} {ms(r['floor']):>8} {ms(r['full']):>8} "
              f"{r['full'] / r['floor']:>5.2f}x {ms(r['change_floor']):>9} {ms(r['change']):>8} "
              f"{r['change'] / r['change_floor']:>5.2f}x "
              f"{ms(r['edit']) if 'edit' in r else 'n/a':>6} {r['full'] / small:>7.1f}x")
    print(f"\nper-period check of every rule ({n} service ports; core share at the default 1 s "
          "period) and one check after damage (detect + repair):")
    print(f"{'backend':10} {'at rest':>15} {'busy':>15} {'1st after write':>15} "
          f"{'jump-moved':>10} {'chain-deleted':>13} {'chain-emptied':>13}")
    for name, r in results.items():
        share = lambda s: f"{ms(s)} {s * 100:.0f}%"  # noqa: E731  (of one core at 1 s)
        moved = ms(r["jump-moved"]) if "jump-moved" in r else "n/a"
        print(f"{name:10} {share(r['rest']):>15} {share(r['busy']):>15} {ms(r['first']):>15} "
              f"{moved:>10} {ms(r['chain-deleted']):>13} {ms(r['chain-emptied']):>13}")
    if "listing" in results.get("nftables", {}):
        listing = results["nftables"]["listing"]
        print(f"nftables: `nft list table` (the full check the digests replace) {ms(listing)}, "
              f"busy check = {results['nftables']['busy'] / listing:.2f}x of it")
    if not args.skip_python_iptables:
        try:
            pyipt = bench_python_iptables(ports, proxy)
        except Exception as exc:  # noqa: BLE001 - report, do not fail the other figures
            print(f"python-iptables: failed: {exc}")
        else:
            floor = results["legacy"]["floor"]
            print(f"python-iptables objects ({n} rules, one commit): {pyipt * 1000:.0f} ms = "
                  f"{pyipt / floor:.1f}x the legacy restore floor")
    print("targets: full < 1 s and ratio < 2x; change ratio < 2x; N/(N/10) <= ~10 (linear); "
          "each repair < 1 s (so repaired within period + 1 s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
