"""The `ip` commands behind edgeproxy0 and offline routes, checked with a recording runner
(the real thing runs in tests/forwarding/test_netns.py)."""

from __future__ import annotations

import subprocess

from edgeproxy.forwarding.listen import RouteKeeper, ensure_interface
from edgeproxy.model import ListenAddresses


class FakeIp:
    def __init__(self, fail=()):
        self.calls: list[list[str]] = []
        self.fail = fail  # predicates over argv that return non-zero

    def __call__(self, argv):
        self.calls.append(list(argv))
        rc = 1 if any(f(list(argv)) for f in self.fail) else 0
        return subprocess.CompletedProcess(["ip", *argv], rc, "", "err" if rc else "")


def test_interface_created_once_with_both_addresses():
    ip = FakeIp(fail=[lambda a: a[:2] == ["link", "show"]])
    assert ensure_interface(ListenAddresses(), ip)
    assert ["link", "add", "edgeproxy0", "type", "dummy"] in ip.calls
    assert ["addr", "replace", "169.254.96.17/32", "dev", "edgeproxy0"] in ip.calls
    assert ["-6", "addr", "replace", "fd65:6467:6570::1/128", "dev", "edgeproxy0",
            "nodad"] in ip.calls
    existing = FakeIp()
    ensure_interface(ListenAddresses(), existing)
    assert not any(c[:2] == ["link", "add"] for c in existing.calls)


def test_routes_only_for_unroutable_vips_and_removed_when_uncaptured():
    routable = {"198.19.0.20"}
    ip = FakeIp(fail=[lambda a: a[:2] == ["route", "get"] and a[2] not in routable])
    keeper = RouteKeeper(ListenAddresses(), ip)
    assert keeper.sync(["198.19.0.10", "198.19.0.20", "fd00::10"]) == {"198.19.0.10", "fd00::10"}
    assert ["route", "add", "198.19.0.10/32", "dev", "edgeproxy0"] in ip.calls
    assert ["route", "add", "fd00::10/128", "dev", "edgeproxy0"] in ip.calls
    assert not any(c[:3] == ["route", "add", "198.19.0.20/32"] for c in ip.calls)
    assert not any("replace" in c for c in ip.calls if c[0] == "route")
    ip.calls.clear()
    assert keeper.sync(["198.19.0.10"]) == {"198.19.0.10"}
    assert ip.calls == [["route", "del", "fd00::10/128", "dev", "edgeproxy0"]]
