"""The `ip` commands behind edgeproxy0 and offline routes, checked with a recording runner
(the real thing runs in tests/forwarding/test_netns.py)."""

from __future__ import annotations

from edgeproxy.forwarding.listen import RouteKeeper, ensure_interface, run_ip_batch
from edgeproxy.model import ListenAddresses
from edgeproxy.tools import Result


class FakeIp:
    """A `Runner` for `ip`: records each command's arguments after "ip"."""

    def __init__(self, fail=()):
        self.calls: list[list[str]] = []
        self.fail = fail  # predicates over argv that return non-zero

    def __call__(self, argv, input=None):
        assert argv[0] == "ip"
        self.calls.append(list(argv[1:]))
        rc = 1 if any(f(list(argv[1:])) for f in self.fail) else 0
        return Result(rc, "", "err" if rc else "")


def test_interface_created_once_with_both_addresses():
    ip = FakeIp(fail=[lambda a: a[:3] == ["-d", "-j", "addr"]])
    setup = ensure_interface(ListenAddresses(), ip)
    assert setup.ipv6 and setup.owned
    assert ["link", "add", "edgeproxy0", "type", "dummy"] in ip.calls
    assert ["link", "set", "edgeproxy0", "alias", "edgeproxy"] in ip.calls
    assert ["addr", "replace", "169.254.96.17/32", "dev", "edgeproxy0"] in ip.calls
    assert ["-6", "addr", "replace", "fd65:6467:6570::1/128", "dev", "edgeproxy0",
            "nodad"] in ip.calls
    existing = FakeIp()
    ensure_interface(ListenAddresses(), existing)
    assert not any(c[:2] == ["link", "add"] for c in existing.calls)


class FakeBatch:
    """Stands in for `ip -batch`: a route lookup succeeds when the VIP is routable, i.e. in
    ``routable`` or given a route by an earlier add."""

    def __init__(self, routable=()):
        self.routable = set(routable)
        self.batches: list[list[list[str]]] = []

    def __call__(self, commands):
        commands = [list(c) for c in commands]
        self.batches.append(commands)
        outcome = []
        for argv in commands:
            vip = argv[2].split("/")[0]
            if argv[1] == "get":
                outcome.append(None if vip in self.routable else "Network is unreachable")
            elif argv[1] == "add":
                self.routable.add(vip)
                outcome.append(None)
            else:
                self.routable.discard(vip)
                outcome.append(None)
        return outcome

    def all(self):
        return [c for batch in self.batches for c in batch]


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def keeper_with(routable, interface_routes=""):
    ip = FakeIp()
    ip_stdout = interface_routes

    def run(argv, input=None):
        ip.calls.append(list(argv[1:]))
        out = ip_stdout if argv[1] == "-4" else ""
        return Result(0, out, "")

    batch, clock = FakeBatch(routable), Clock()
    return RouteKeeper(ListenAddresses(), run, batch, recheck_interval=30, clock=clock), batch, clock


def test_routes_only_for_unroutable_vips_and_removed_when_uncaptured():
    keeper, batch, _ = keeper_with({"198.19.0.20"})
    assert keeper.sync(["198.19.0.10", "198.19.0.20", "fd00::10"]) == {"198.19.0.10", "fd00::10"}
    assert ["route", "add", "198.19.0.10/32", "dev", "edgeproxy0"] in batch.all()
    assert ["route", "add", "fd00::10/128", "dev", "edgeproxy0"] in batch.all()
    assert not any(c[:3] == ["route", "add", "198.19.0.20/32"] for c in batch.all())
    assert not any("replace" in c for c in batch.all())
    batch.batches.clear()
    assert keeper.sync(["198.19.0.10"]) == {"198.19.0.10"}
    assert batch.all() == [["route", "del", "fd00::10/128", "dev", "edgeproxy0"]]


def test_one_batch_per_sync_and_known_vips_are_not_looked_up_again():
    keeper, batch, _ = keeper_with({f"198.19.1.{i}" for i in range(1, 101)})
    vips = [f"198.19.{n}.{i}" for n in (1, 2) for i in range(1, 101)]
    assert len(keeper.sync(vips)) == 100
    assert len(batch.batches) == 2  # every lookup in one batch, every add in another
    batch.batches.clear()
    keeper.sync(vips + ["198.19.3.1"])
    assert batch.all() == [["route", "get", "198.19.3.1"],
                           ["route", "add", "198.19.3.1/32", "dev", "edgeproxy0"]]
    batch.batches.clear()
    keeper.sync(vips + ["198.19.3.1"])
    assert batch.batches == []


def test_recheck_finds_a_lost_default_route_and_a_removed_route():
    keeper, batch, clock = keeper_with({"198.19.0.20"})
    keeper.sync(["198.19.0.10", "198.19.0.20"])
    batch.routable.discard("198.19.0.20")  # the default route went away
    clock.now += 10
    batch.batches.clear()
    keeper.sync(["198.19.0.10", "198.19.0.20"])
    assert batch.batches == []  # not due yet
    clock.now += 25
    batch.routable.discard("198.19.0.10")  # someone deleted our route (the interface lists none)
    assert keeper.sync(["198.19.0.10", "198.19.0.20"]) == {"198.19.0.10", "198.19.0.20"}
    assert ["route", "get", "198.19.0.20"] in batch.all()
    assert ["route", "add", "198.19.0.20/32", "dev", "edgeproxy0"] in batch.all()


def test_routes_left_by_a_killed_run_are_adopted_and_removed():
    keeper, batch, _ = keeper_with(set(), interface_routes="198.19.0.99 scope link \n")
    assert keeper.sync([]) == set()
    assert batch.all() == [["route", "del", "198.19.0.99/32", "dev", "edgeproxy0"]]


def test_batch_failures_are_attributed_to_their_lines():
    def fake_run(argv, input=None):
        assert list(argv) == ["ip", "-force", "-batch", "-"]
        assert input == "route get 1.1.1.1\nroute get 2.2.2.2\nroute get 3.3.3.3\n"
        return Result(1, "", "RTNETLINK answers: Network is unreachable\nCommand failed -:2\n")

    assert run_ip_batch([["route", "get", ip] for ip in ("1.1.1.1", "2.2.2.2", "3.3.3.3")],
                        fake_run) == [None, "RTNETLINK answers: Network is unreachable", None]


def test_dns_addresses_are_kept_on_the_interface_like_the_listen_addresses():
    listen = ListenAddresses(dns=("169.254.96.53", "fd65:6467:6570::53"))
    ip = FakeIp()
    ensure_interface(listen, ip)
    assert ["addr", "replace", "169.254.96.53/32", "dev", "edgeproxy0"] in ip.calls
    assert ["-6", "addr", "replace", "fd65:6467:6570::53/128", "dev", "edgeproxy0",
            "nodad"] in ip.calls
