"""Rendering: golden files, and packets traced through the rendered rules.

Golden files live in tests/rules/golden/. After an intended change of the rendering, regenerate
them with ``UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/rules/test_render.py`` and review
the diff like code.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edgeproxy.model import ListenAddresses
from edgeproxy.rules.backends.iptables_restore import jump_edits
from edgeproxy.rules.iptables_text import parse_save
from edgeproxy.rules.render import (JUMPS, KUBE_SERVICES, LISTEN_GUARD, PORTALS_COMMENT,
                                    render_rules)
from tests.rules import states
from tests.rules.tracer import Packet, trace

GOLDEN = Path(__file__).parent / "golden"

# A node where kube-proxy (iptables mode) already runs: its jump is rule 1 and it would send
# 198.19.0.10:80 to 198.18.1.11:8080 and 198.19.0.30:9100 to 198.18.1.30:9100.
KUBE_PROXY_NAT = """*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A KUBE-SERVICES -d 198.19.0.10/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 198.18.1.11:8080
-A KUBE-SERVICES -d 198.19.0.30/32 -p tcp -m tcp --dport 9100 -j DNAT --to-destination 198.18.1.30:9100
COMMIT
"""


def _check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"{path} missing: run with UPDATE_GOLDEN=1 to create it"
    assert text == path.read_text(), f"{name} differs from the golden file (UPDATE_GOLDEN=1)"


def _all_iptables_text(rs) -> str:
    parts = []
    for family in rs.families:
        for table in rs.tables(family):
            parts.append(f"# {'ip6tables' if family == 6 else 'iptables'}-restore --noflush\n"
                         + rs.restore_text(family, table))
    return "".join(parts)


@pytest.mark.parametrize("name,ports_fn", [("examples", states.example_ports),
                                           ("full", states.full_ports)])
def test_golden_iptables_and_nft(name, ports_fn):
    ports = ports_fn()
    rs = render_rules(ports, states.proxy_ports_for(ports), states.LISTEN)
    _check_golden(f"{name}.iptables", _all_iptables_text(rs))
    _check_golden(f"{name}.nft", "".join(rs.nft_text(f) for f in rs.families))


def test_rendering_is_deterministic_and_ignores_dict_order():
    ports = states.full_ports()
    reversed_ports = dict(reversed(list(ports.items())))
    a = render_rules(ports, states.proxy_ports_for(ports), states.LISTEN)
    b = render_rules(reversed_ports, states.proxy_ports_for(ports), states.LISTEN)
    assert a == b
    assert _all_iptables_text(a) == _all_iptables_text(b)


def _node(rs, family: int = 4):
    """nat table of a kube-proxy node after our restore text was applied the way the backend
    does it (jumps placed by jump_edits against the live table)."""
    live = parse_save(KUBE_PROXY_NAT)
    lines = []
    for chain in ("PREROUTING", "OUTPUT"):
        edits, _ = jump_edits(live["nat"], chain,
                              [j.tokens for j in JUMPS if j.table == "nat" and j.chain == chain])
        lines += edits
    return parse_save(rs.restore_text(family, "nat", jump_lines=lines), into=live)


@pytest.mark.parametrize("path", ["pod", "host"])
def test_clusterip_from_pod_and_host_lands_on_listen_proxy_port(path):
    ports = states.example_ports()
    pp = states.proxy_ports_for(ports)
    tables = _node(render_rules(ports, pp, states.LISTEN))
    for key, sp in ports.items():
        out = trace(tables, Packet(sp.cluster_ips[0], sp.port, key.protocol.value.lower(),
                                   path=path))
        assert (out.verdict, out.destination) == ("DNAT", f"169.254.96.17:{pp[key]}"), key
        assert out.chains[1].startswith("KUBE-PORTALS"), out.chains


def test_jumps_are_placed_before_kube_services_not_at_rule_one():
    live = parse_save('*nat\n:PREROUTING ACCEPT [0:0]\n:cali-PREROUTING - [0:0]\n'
                      '-A PREROUTING -j cali-PREROUTING\n' + KUBE_PROXY_NAT.split("\n", 1)[1])
    edits, why = jump_edits(live["nat"], "PREROUTING",
                            [j.tokens for j in JUMPS if j.chain == "PREROUTING"])
    assert why == "jumps missing"
    after = parse_save("*nat\n" + "\n".join(edits) + "\nCOMMIT\n", into=live)
    targets = [r.target for r in after["nat"].chains["PREROUTING"]]
    assert targets == ["cali-PREROUTING", "KUBE-PORTALS-CONTAINER", "KUBE-NODEPORT-CONTAINER",
                       KUBE_SERVICES]
    # Once right, nothing more to do: two keepers never fight.
    assert jump_edits(after["nat"], "PREROUTING",
                      [j.tokens for j in JUMPS if j.chain == "PREROUTING"]) == ([], "")


def test_duplicate_and_foreign_jumps_collapse_to_one_copy():
    portals = [j.tokens for j in JUMPS if j.chain == "PREROUTING"]
    text = ("*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-PORTALS-CONTAINER - [0:0]\n"
            ":KUBE-NODEPORT-CONTAINER - [0:0]\n:KUBE-SERVICES - [0:0]\n"
            f'-A PREROUTING -m comment --comment "{PORTALS_COMMENT}" -j KUBE-PORTALS-CONTAINER\n'
            "-A PREROUTING -j KUBE-SERVICES\n"
            f'-A PREROUTING -m comment --comment "{PORTALS_COMMENT}" -j KUBE-PORTALS-CONTAINER\n'
            "-A PREROUTING -j KUBE-PORTALS-CONTAINER\nCOMMIT\n")
    live = parse_save(text)
    edits, why = jump_edits(live["nat"], "PREROUTING", portals)
    assert why
    after = parse_save("*nat\n" + "\n".join(edits) + "\nCOMMIT\n", into=live)
    targets = [r.target for r in after["nat"].chains["PREROUTING"]]
    assert targets == ["KUBE-PORTALS-CONTAINER", "KUBE-NODEPORT-CONTAINER", KUBE_SERVICES]


def test_skipped_or_removed_service_falls_through_to_kube_proxy():
    ports = states.example_ports()
    pp = states.proxy_ports_for(ports)
    # 198.19.0.30:9100 is labelled for another proxy: never in the state, kube-proxy keeps it.
    tables = _node(render_rules(ports, pp, states.LISTEN))
    out = trace(tables, Packet("198.19.0.30", 9100))
    assert (out.verdict, out.destination) == ("DNAT", "198.18.1.30:9100")
    # web removed from the state: the next rendering no longer captures it.
    del ports[states.WEB]
    tables = _node(render_rules(ports, pp, states.LISTEN))
    out = trace(tables, Packet("198.19.0.10", 80))
    assert (out.verdict, out.destination) == ("DNAT", "198.18.1.11:8080")
    # Wrong port or protocol of a captured VIP is not captured either.
    assert trace(tables, Packet("198.19.0.53", 5353, "udp")).verdict is None
    assert trace(tables, Packet("198.19.0.20", 7, "udp")).verdict is None


def test_key_without_proxy_port_and_sctp_are_not_captured():
    ports = states.full_ports()
    pp = states.proxy_ports_for(ports)
    del pp[states.ECHO]
    rs = render_rules(ports, pp, states.LISTEN)
    tables = _node(rs)
    assert trace(tables, Packet("198.19.0.20", 7)).verdict is None
    assert trace(tables, Packet("198.19.0.50", 3868, "sctp")).verdict is None
    assert any("default/echo" in s for s in rs.skipped)
    assert any("SCTP" in s for s in rs.skipped)


def test_load_balancer_external_and_node_ports():
    ports = states.full_ports()
    pp = states.proxy_ports_for(ports)
    dest = f"169.254.96.17:{pp[states.GW]}"
    tables = _node(render_rules(ports, pp, states.LISTEN))
    # Load-balancer ingress IP: captured like the ClusterIP from pods and the host.
    for path in ("pod", "host"):
        assert trace(tables, Packet("198.18.200.1", 443, path=path)).destination == dest
    # External IP that is a local address: captured on both paths.
    for path in ("pod", "host"):
        assert trace(tables, Packet("198.18.0.1", 443, path=path)).destination == dest
    # Non-local external IP: from a pod only when not bridged; from the host never.
    assert trace(tables, Packet("198.18.9.9", 443)).destination == dest
    assert trace(tables, Packet("198.18.9.9", 443, bridged=True)).verdict is None
    assert trace(tables, Packet("198.18.9.9", 443, path="host")).verdict is None
    # NodePort on a local address, from outside and from the host; not to foreign addresses.
    for path in ("pod", "host"):
        assert trace(tables, Packet("198.18.0.1", 30443, path=path)).destination == dest
    assert trace(tables, Packet("198.18.5.5", 30443)).verdict is None


def test_nft_an_external_ip_that_is_also_a_cluster_ip_is_captured_once_per_chain():
    from dataclasses import replace

    web = states.example_ports()[states.WEB]
    twice = {states.WEB: replace(web, external_ips=(web.cluster_ips[0], "198.18.9.9"))}
    rs = render_rules(twice, states.proxy_ports_for(twice), states.LISTEN)
    chains = rs.nft_chain_rules(4)
    vip = f"ip daddr {web.cluster_ips[0]} tcp dport {web.port}"
    for chain in ("KUBE-PORTALS-CONTAINER", "KUBE-PORTALS-HOST"):
        assert [r.startswith(vip) for r in chains[chain]].count(True) == 1, chains[chain]
    # The other external IP: unconditional from pods (no physdev in nft), local from the host.
    assert any(r.startswith("ip daddr 198.18.9.9 tcp dport 80 dnat")
               for r in chains["KUBE-PORTALS-CONTAINER"])
    assert any(r.startswith("ip daddr 198.18.9.9 tcp dport 80 fib daddr type local dnat")
               for r in chains["KUBE-PORTALS-HOST"])
    # iptables keeps every rule kube-proxy userspace writes.
    assert sum(vip.split()[2] in " ".join(spec)
               for _, specs in rs.chains[(4, "nat")] for spec in specs) == 5


def test_ipv6_vip_goes_to_ip6tables_with_bracketed_destination():
    ports = states.full_ports()
    pp = states.proxy_ports_for(ports)
    rs = render_rules(ports, pp, states.LISTEN)
    assert rs.families == (4, 6)
    tables = parse_save(rs.restore_text(6, "nat"))
    out = trace(tables, Packet("fd00:198:19::40", 443, src="fd00::2",
                               local_addrs=frozenset({"fd65:6467:6570::1"})))
    assert out.destination == f"[fd65:6467:6570::1]:{pp[states.GW]}"
    # IPv4-only state: no IPv6 rules at all.
    v4 = states.example_ports()
    assert render_rules(v4, states.proxy_ports_for(v4), states.LISTEN).families == (4,)
    # No IPv6 listen address: the IPv6 address is reported, not rendered.
    rs = render_rules(ports, pp, ListenAddresses(ipv6=None))
    assert rs.families == (4,)
    assert any("IPv6" in s for s in rs.skipped)


def test_listen_guard_drops_only_traffic_that_was_not_dnated():
    ports = states.example_ports()
    tables = parse_save(render_rules(ports, states.proxy_ports_for(ports),
                                     states.LISTEN).restore_text(4, "filter"))
    direct = Packet("169.254.96.17", 61000)
    assert trace(tables, direct, table="filter").verdict == "DROP"
    assert LISTEN_GUARD in trace(tables, direct, table="filter").chains
    dnated = Packet("169.254.96.17", 61000, ctstate=frozenset({"DNAT"}))
    assert trace(tables, dnated, table="filter").verdict is None


def test_restore_text_only_names_our_chains():
    ports = states.full_ports()
    rs = render_rules(ports, states.proxy_ports_for(ports), states.LISTEN)
    ours = {"KUBE-PORTALS-CONTAINER", "KUBE-PORTALS-HOST", "KUBE-NODEPORT-CONTAINER",
            "KUBE-NODEPORT-HOST", "KUBE-NODEPORT-NON-LOCAL", LISTEN_GUARD}
    for family in rs.families:
        for table in rs.tables(family):
            for line in rs.restore_text(family, table).splitlines():
                if line.startswith(":"):
                    assert line[1:].split()[0] in ours
                elif line.startswith("-A"):
                    assert line.split()[1] in ours
                elif line.startswith("-I"):
                    assert line.split()[1] in ("PREROUTING", "OUTPUT", "INPUT")
                    assert line.split()[-1] in ours
                else:
                    assert line in (f"*{table}", "COMMIT"), line


def test_real_world_corpus_every_proxied_port_is_captured_and_nothing_else(corpus_dir):
    """Load the whole real-world corpus, render, and trace a packet to every address and port
    of every proxied service port (from a pod and from the host), plus the IPv6 ones."""
    from edgeproxy.manifests import load_state

    state = load_state([corpus_dir])
    assert state.ports, "corpus yields no proxied service port"
    pp = states.proxy_ports_for(state.ports)
    rs = render_rules(state.ports, pp, states.LISTEN)
    tables = {4: _node(rs, 4)}
    if 6 in rs.families:
        tables[6] = parse_save(rs.restore_text(6, "nat"))
    vips: dict[tuple[str, int, str], set[str]] = {}
    for key, sp in state.ports.items():
        if key not in pp:
            continue
        for vip in sp.vips:
            vips.setdefault((vip, sp.port, key.protocol.value.lower()), set()).add(
                f"[{states.LISTEN.ipv6}]:{pp[key]}" if ":" in vip
                else f"{states.LISTEN.ipv4}:{pp[key]}")
    for (vip, port, proto), dests in vips.items():
        family = 6 if ":" in vip else 4
        for path in ("pod", "host"):
            out = trace(tables[family], Packet(vip, port, proto, path=path,
                                               src="fd00::2" if family == 6 else "198.18.2.10"))
            assert out.verdict == "DNAT" and out.destination in dests, (vip, port, proto, out)
    # A port nobody declared on a captured address is not captured.
    undeclared = [k for k in vips if ":" not in k[0] and (k[0], 1, k[2]) not in vips]
    assert undeclared
    for vip, _, proto in undeclared:
        assert trace(tables[4], Packet(vip, 1, proto)).verdict is None
    assert len(vips) >= 10  # the corpus really exercised the renderer (most Services there
    # carry no clusterIP and are skipped by the state builder, see EXPECTED.tsv)


def test_caching_renderer_equals_a_full_render_and_renders_only_what_changed():
    from dataclasses import replace

    from edgeproxy.rules.render import RuleRenderer

    renderer = RuleRenderer()
    ports = states.full_ports()
    proxy = states.proxy_ports_for(ports)
    assert renderer(ports, proxy, states.LISTEN) == render_rules(ports, proxy, states.LISTEN)
    assert renderer.rendered_last == len(ports)
    # One service changed (a new VIP), one removed, the rest untouched.
    changed = dict(ports)
    changed[states.WEB] = replace(ports[states.WEB], cluster_ips=("198.19.0.11",))
    del changed[states.ECHO]
    proxy2 = {k: v for k, v in proxy.items() if k in changed}
    assert renderer(changed, proxy2, states.LISTEN) == render_rules(changed, proxy2,
                                                                    states.LISTEN)
    assert renderer.rendered_last == 1
    # A new proxy port is a change too; so is another listen address (everything again).
    proxy2[states.GW] = 62999
    assert renderer(changed, proxy2, states.LISTEN) == render_rules(changed, proxy2,
                                                                    states.LISTEN)
    assert renderer.rendered_last == 1
    other = ListenAddresses(ipv4="169.254.96.18")
    assert renderer(changed, proxy2, other) == render_rules(changed, proxy2, other)
    assert renderer.rendered_last == len(changed)


@pytest.mark.parametrize("internal,external,cluster_ip,pods_external,host_external", [
    # (cluster IPs, external addresses from pods, from the host): main or second listener
    ("Cluster", "Local", "main", "second", "main"),
    ("Local", "Cluster", "main", "second", "second"),
    ("Local", "Local", "main", "main", "second"),
])
def test_traffic_policies_split_external_addresses_onto_the_second_listener(
        internal, external, cluster_ip, pods_external, host_external):
    """kube-proxy's external-traffic chain: pods reaching an external address (external IP,
    load-balancer IP, NodePort) follow externalTrafficPolicy, the node itself always gets the
    Cluster set, the cluster IPs follow internalTrafficPolicy: a port whose policies need both
    sets gets a second listener and its external captures split between the two."""
    from dataclasses import replace

    from edgeproxy.model import TrafficPolicy

    gw = replace(states.full_ports()[states.GW], traffic=TrafficPolicy(internal, external))
    ports = {states.GW: gw}
    pp, second = {states.GW: 61000}, {states.GW: 61001}
    rs = render_rules(ports, pp, states.LISTEN, second_ports=second)
    tables = _node(rs)
    where = {"main": "169.254.96.17:61000", "second": "169.254.96.17:61001"}
    for path in ("pod", "host"):
        assert trace(tables, Packet("198.19.0.40", 443, path=path)).destination == \
            where[cluster_ip]
    for dst, port in (("198.18.200.1", 443), ("198.18.0.1", 443), ("198.18.0.1", 30443)):
        assert trace(tables, Packet(dst, port)).destination == where[pods_external], dst
        assert trace(tables, Packet(dst, port, path="host")).destination == \
            where[host_external], dst
    # Non-local NodePort traffic may reach both listeners.
    accepted = [spec for name, specs in rs.chains[(4, "filter")] if name == "KUBE-NODEPORT-NON-LOCAL"
                for spec in specs]
    assert {spec[spec.index("--dport") + 1] for spec in accepted} == {"61000", "61001"}
    # The nftables form says the same.
    nft = rs.nft_chain_rules(4)
    lb = [r for r in nft["KUBE-PORTALS-CONTAINER"] if r.startswith("ip daddr 198.18.200.1 ")]
    assert lb == [f'ip daddr 198.18.200.1 tcp dport 443 dnat to {where[pods_external]} '
                  f'comment "ingress/gateway:https"']
    node_port = [r for r in nft["KUBE-NODEPORT-HOST"] if "dport 30443" in r]
    assert node_port and where[host_external] in node_port[0]


def test_no_second_port_no_split():
    from dataclasses import replace

    from edgeproxy.model import TrafficPolicy

    gw = replace(states.full_ports()[states.GW], traffic=TrafficPolicy("Cluster", "Local"))
    plain = render_rules({states.GW: states.full_ports()[states.GW]}, {states.GW: 61000},
                         states.LISTEN)
    # The daemon has not opened the second listener (yet): everything stays on the main one.
    assert render_rules({states.GW: gw}, {states.GW: 61000}, states.LISTEN).chains == \
        plain.chains
