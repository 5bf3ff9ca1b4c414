"""Proxy port ranges (kube-proxy syntax), persisted allocation, reserved-port merging."""

from __future__ import annotations

import json
import pytest

from edgeproxy.forwarding.ports import (
    DEFAULT_PORT_RANGE,
    RESERVED_PORTS_PATH,
    PortAllocator,
    PortExhaustedError,
    PortRange,
    format_port_list,
    merge_port_list,
    parse_port_list,
    reserve_ports,
)


@pytest.mark.parametrize("text,base,size", [
    ("61000-64999", 61000, 4000),
    ("61000+3999", 61000, 4000),
    ("30000", 30000, 1),
    ("", 0, 0),
    (" 100-100 ", 100, 1),
])
def test_parse(text, base, size):
    r = PortRange.parse(text)
    assert (r.base, r.size) == (base, size)


def test_default_range_is_outside_ephemeral_range():
    assert str(DEFAULT_PORT_RANGE) == "61000-64999"
    assert 60999 not in DEFAULT_PORT_RANGE and 61000 in DEFAULT_PORT_RANGE
    assert 64999 in DEFAULT_PORT_RANGE and 65000 not in DEFAULT_PORT_RANGE


@pytest.mark.parametrize("text,fragment", [
    ("abc", "expected"),
    ("0-10", "1-65535"),
    ("65000-70000", "1-65535"),
    ("500-400", "below start"),
    ("1+x", "expected"),
])
def test_parse_rejects(text, fragment):
    with pytest.raises(ValueError, match=fragment):
        PortRange.parse(text)


def free_binder(busy=()):
    bound = []

    def try_bind(port):
        if port in busy:
            return None
        bound.append(port)
        return port
    return try_bind, bound


def test_allocation_is_deterministic_and_distinct():
    r = PortRange.parse("61000-61099")
    a, b = PortAllocator(r), PortAllocator(r)
    keys = [f"default/svc{i}:http/TCP" for i in range(50)]
    ports_a = [a.allocate(k, free_binder()[0]) for k in keys]
    ports_b = [b.allocate(k, free_binder()[0]) for k in keys]
    assert ports_a == ports_b
    assert len(set(ports_a)) == 50 and all(p in r for p in ports_a)


def test_allocation_persists_across_restart_even_in_other_order(tmp_path):
    r = PortRange.parse("61000-61009")
    state = tmp_path / "ports.json"
    first = PortAllocator(r, state)
    keys = [f"ns/s{i}/TCP" for i in range(6)]
    got = {k: first.allocate(k, free_binder()[0]) for k in keys}
    first.save()
    assert json.loads(state.read_text())["ports"] == got
    second = PortAllocator(r, state)
    again = {k: second.allocate(k, free_binder()[0]) for k in reversed(keys)}
    assert again == got


def test_state_file_is_written_only_when_an_assignment_changed(tmp_path):
    r = PortRange.parse("61000-61009")
    state = tmp_path / "ports.json"
    alloc = PortAllocator(r, state)
    alloc.allocate("a", free_binder()[0])
    alloc.save()
    state.unlink()
    alloc.save()  # nothing changed: not rewritten
    assert not state.exists()
    alloc.release("a")
    alloc.allocate("a", free_binder()[0])  # same port back: still nothing new
    alloc.save()
    assert not state.exists()
    alloc.allocate("b", free_binder()[0])
    alloc.save()
    assert set(json.loads(state.read_text())["ports"]) == {"a", "b"}


def test_removed_key_gets_its_port_back_and_others_avoid_it(tmp_path):
    r = PortRange.parse("61000-61003")
    alloc = PortAllocator(r, tmp_path / "ports.json")
    p = alloc.allocate("a", free_binder()[0])
    alloc.release("a")
    others = [alloc.allocate(k, free_binder()[0]) for k in ("b", "c", "d")]
    assert p not in others
    assert alloc.allocate("a", free_binder()[0]) == p


def test_remembered_ports_are_reclaimed_when_range_is_full():
    r = PortRange.parse("61000-61001")
    alloc = PortAllocator(r)
    alloc.allocate("a", free_binder()[0])
    alloc.allocate("b", free_binder()[0])
    alloc.release("a")
    assert alloc.allocate("c", free_binder()[0]) in r
    with pytest.raises(PortExhaustedError, match="61000-61001"):
        alloc.allocate("d", free_binder()[0])


def test_busy_ports_are_skipped():
    r = PortRange.parse("61000-61002")
    try_bind, _ = free_binder(busy={61000, 61001})
    assert PortAllocator(r).allocate("x", try_bind) == 61002


def test_kernel_chosen_reuses_previous_port(tmp_path):
    state = tmp_path / "ports.json"
    alloc = PortAllocator(PortRange(), state)
    assert alloc.allocate("x", lambda p: p or 40123) == 40123
    alloc.save()
    again = PortAllocator(PortRange(), state)
    seen = []
    assert again.allocate("x", lambda p: seen.append(p) or (p or 40999)) == 40123
    assert seen == [40123]


def test_corrupt_state_is_ignored(tmp_path):
    state = tmp_path / "ports.json"
    state.write_text("{not json")
    alloc = PortAllocator(PortRange.parse("61000-61009"), state)
    assert alloc.allocate("x", free_binder()[0]) in range(61000, 61010)


def test_port_list_merge():
    ranges = parse_port_list("1000,2000-2005\n")
    assert ranges == [(1000, 1000), (2000, 2005)]
    assert format_port_list(merge_port_list(ranges + [(2003, 2010), (1001, 1001)])) == (
        "1000-1001,2000-2010")


def test_reserve_ports_merges_in_file(tmp_path):
    f = tmp_path / "reserved"
    f.write_text("1000,50000-50010\n")
    assert reserve_ports(PortRange.parse("61000-64999"), f)
    assert f.read_text() == "1000,50000-50010,61000-64999\n"
    assert not reserve_ports(PortRange.parse("61000-64999"), f)  # already there
    assert not reserve_ports(PortRange(), f)


@pytest.mark.netns
def test_reserve_ports_in_namespace_keeps_existing_entries(netns):
    host_before = RESERVED_PORTS_PATH.read_text()
    with netns.entered():
        RESERVED_PORTS_PATH.write_text("4000\n")
        reserve_ports(PortRange.parse("61000-64999"))
        inside = RESERVED_PORTS_PATH.read_text()
    assert inside.strip() == "4000,61000-64999"
    assert RESERVED_PORTS_PATH.read_text() == host_before
