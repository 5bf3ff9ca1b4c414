"""Balancer: kube-proxy userspace roundrobin_test.go cases ported, plus EdgeMesh policies."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from edgeproxy.forwarding.balancer import Balancer, NoEndpointsError
from edgeproxy.model import Endpoint, LoadBalancerKind, LoadBalancerPolicy


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def eps(*ports: int, ip: str = "198.18.1.10") -> list[Endpoint]:
    return [Endpoint(ip, p) for p in ports]


def sticky(endpoints, clock=None, timeout=10800, seed=1) -> Balancer:
    return Balancer(endpoints, session_affinity=True, affinity_timeout=timeout,
                    clock=clock or FakeClock(), rng=random.Random(seed))


C1, C2, C3, C4, C5, C6 = (f"127.0.0.{i}" for i in range(1, 7))


def test_fails_with_no_endpoints():
    lb = Balancer()
    with pytest.raises(NoEndpointsError):
        lb.next_endpoint()


def test_single_endpoint():
    lb = Balancer(eps(40))
    assert [lb.next_endpoint() for _ in range(4)] == eps(40, 40, 40, 40)


@pytest.mark.parametrize("seed", range(5))
def test_multiple_endpoints_round_robin_over_shuffled_list(seed):
    lb = Balancer(eps(1, 2, 3), rng=random.Random(seed))
    order = lb.endpoints
    assert sorted(order) == eps(1, 2, 3)
    assert [lb.next_endpoint() for _ in range(4)] == [order[0], order[1], order[2], order[0]]


def test_shuffle_actually_shuffles():
    orders = {Balancer(eps(*range(1, 9)), rng=random.Random(s)).endpoints for s in range(10)}
    assert len(orders) > 1


def test_update_with_different_endpoints_restarts_at_beginning():
    lb = Balancer(eps(1, 2, 3), rng=random.Random(3))
    first = lb.endpoints
    assert [lb.next_endpoint() for _ in range(4)] == [first[0], first[1], first[2], first[0]]
    lb.update(eps(4, 5))
    order = lb.endpoints
    assert sorted(order) == eps(4, 5)
    assert [lb.next_endpoint() for _ in range(4)] == [order[0], order[1], order[0], order[1]]
    lb.update([])
    with pytest.raises(NoEndpointsError):
        lb.next_endpoint()


def test_update_with_same_set_keeps_order_and_position():
    lb = Balancer(eps(1, 2, 3), rng=random.Random(7))
    order = lb.endpoints
    lb.next_endpoint()
    lb.update(list(reversed(eps(1, 2, 3))))
    assert lb.endpoints == order
    assert lb.next_endpoint() == order[1]


def test_independent_services_continue_where_they_left_off():
    # kube-proxy TestLoadBalanceWorksWithServiceRemoval: removing foo leaves bar's position alone.
    foo = Balancer(eps(123, ip="198.18.1.1") + eps(123, ip="198.18.1.2"), rng=random.Random(1))
    bar = Balancer(eps(4, 5, 6), rng=random.Random(2))
    for _ in range(5):
        foo.next_endpoint()
    b = bar.endpoints
    assert [bar.next_endpoint() for _ in range(5)] == [b[0], b[1], b[2], b[0], b[1]]
    foo.update([])
    with pytest.raises(NoEndpointsError):
        foo.next_endpoint()
    assert [bar.next_endpoint() for _ in range(4)] == [b[2], b[0], b[1], b[2]]


def test_sticky_interleaved_clients():
    # TestStickyLoadBalanceWorksWithNewServiceCalledFirst/Second.
    lb = sticky(eps(1, 2, 3))
    ep1 = lb.next_endpoint(C1)
    assert [lb.next_endpoint(C1) for _ in range(3)] == [ep1] * 3
    ep2 = lb.next_endpoint(C2)
    assert [lb.next_endpoint(C2) for _ in range(3)] == [ep2] * 3
    ep3 = lb.next_endpoint(C3)
    assert [lb.next_endpoint(C3) for _ in range(3)] == [ep3] * 3
    assert len({ep1, ep2, ep3}) == 3
    for _ in range(2):
        assert (lb.next_endpoint(C1), lb.next_endpoint(C2), lb.next_endpoint(C3)) == (ep1, ep2, ep3)


def test_sticky_enabled_after_endpoints():
    lb = Balancer(eps(1, 2), rng=random.Random(4), clock=FakeClock())
    lb.update(eps(1, 2), session_affinity=True, affinity_timeout=10800)
    ep1, ep2 = lb.next_endpoint(C1), lb.next_endpoint(C2)
    assert ep1 != ep2
    assert [lb.next_endpoint(c) for c in (C1, C2, C1, C2)] == [ep1, ep2, ep1, ep2]


@pytest.mark.parametrize("seed", range(6))
def test_sticky_remove_one_endpoint_repins_only_its_clients(seed):
    # TestStickyLoadBalanaceWorksWithMultipleEndpointsRemoveOne.
    lb = sticky(eps(1, 2, 3), seed=seed)
    s = lb.endpoints
    assert lb.next_endpoint(C1) == s[0]
    assert lb.next_endpoint(C1) == s[0]
    assert lb.next_endpoint(C2) == s[1]
    assert lb.next_endpoint(C2) == s[1]
    assert lb.next_endpoint(C3) == s[2]
    pinned = {C1: s[0], C2: s[1], C3: s[2]}

    lb.update(eps(1, 2))
    s = lb.endpoints
    for client, ep in pinned.items():
        if ep == Endpoint("198.18.1.10", 3):
            pinned[client] = s[0]
    for client in (C1, C2, C3):
        assert lb.next_endpoint(client) == pinned[client]

    lb.update(eps(1, 2, 4))
    s = lb.endpoints
    for client in (C1, C2, C3):
        assert lb.next_endpoint(client) == pinned[client]
    assert [lb.next_endpoint(c) for c in (C4, C5, C6)] == [s[0], s[1], s[2]]


def test_sticky_with_all_endpoints_replaced():
    # TestStickyLoadBalanceWorksWithMultipleEndpointsAndUpdates.
    lb = sticky(eps(1, 2, 3))
    s = lb.endpoints
    got = [lb.next_endpoint(c) for c in (C1, C1, C2, C2, C3, C1, C2)]
    assert got == [s[0], s[0], s[1], s[1], s[2], s[0], s[1]]
    lb.update(eps(4, 5))
    s = lb.endpoints
    got = [lb.next_endpoint(c) for c in (C1, C2, C1, C1, C2, C2)]
    assert got == [s[0], s[1], s[0], s[0], s[1], s[1]]
    lb.update([])
    with pytest.raises(NoEndpointsError):
        lb.next_endpoint(C1)


def test_sticky_reset_on_endpoint_failure():
    # TestStickyLoadBalanceWorksWithEndpointFails.
    lb = sticky(eps(1, 2, 3))
    ep1, ep2, ep3 = lb.next_endpoint(C1), lb.next_endpoint(C2), lb.next_endpoint(C3)
    assert lb.next_endpoint(C1, reset_affinity=True) == ep1
    assert lb.next_endpoint(C1, reset_affinity=True) == ep2
    assert lb.next_endpoint(C1, reset_affinity=True) == ep3
    assert lb.next_endpoint(C2) == ep2
    assert lb.next_endpoint(C2, reset_affinity=True) == ep1
    assert lb.next_endpoint(C3, reset_affinity=True) == ep2
    assert lb.next_endpoint(C1, reset_affinity=True) == ep3
    assert lb.next_endpoint(C2, reset_affinity=True) == ep1
    # The reset re-pins: without reset the client now stays on its new endpoint.
    assert lb.next_endpoint(C2) == ep1


def test_affinity_expires_on_monotonic_timeout():
    clock = FakeClock()
    lb = sticky(eps(1, 2), clock=clock, timeout=10)
    ep = lb.next_endpoint(C1)
    clock.now += 9.5
    assert lb.next_endpoint(C1) == ep  # use refreshes the pin
    clock.now += 9.5
    assert lb.next_endpoint(C1) == ep
    other = lb.next_endpoint(C2)
    clock.now += 10.0
    assert lb.expire_affinity() == 0  # both pins expired
    # Expired: round robin continues, so C1 now gets the endpoint after C2's.
    assert lb.next_endpoint(C1) != other


def test_affinity_entries_are_bounded():
    lb = Balancer(eps(1, 2), session_affinity=True, clock=FakeClock(), max_affinity_entries=100)
    for i in range(1000):
        lb.next_endpoint(f"198.18.{i // 256}.{i % 256}")
    assert lb.expire_affinity() <= 100


def test_disabling_affinity_drops_pins():
    lb = sticky(eps(1, 2))
    lb.next_endpoint(C1)
    lb.update(eps(1, 2), session_affinity=False)
    assert lb.expire_affinity() == 0


def test_random_policy_uses_every_endpoint():
    lb = Balancer(eps(1, 2, 3), LoadBalancerPolicy(LoadBalancerKind.RANDOM), rng=random.Random(5))
    counts = Counter(lb.next_endpoint() for _ in range(600))
    assert set(counts) == set(eps(1, 2, 3))
    assert min(counts.values()) > 120


SOURCE_IP = LoadBalancerPolicy(LoadBalancerKind.CONSISTENT_HASH_SOURCE_IP)
HEADER = LoadBalancerPolicy(LoadBalancerKind.CONSISTENT_HASH_HTTP_HEADER, http_header_name="x-user")


def test_source_ip_hash_is_stable_and_ignores_shuffle():
    clients = [f"198.18.7.{i}" for i in range(200)]
    a = Balancer(eps(1, 2, 3, 4), SOURCE_IP, rng=random.Random(1))
    b = Balancer(eps(4, 3, 2, 1), SOURCE_IP, rng=random.Random(99))
    assert [a.next_endpoint(c) for c in clients] == [b.next_endpoint(c) for c in clients]
    assert [a.next_endpoint(c) for c in clients] == [a.next_endpoint(c) for c in clients]
    assert len({a.next_endpoint(c) for c in clients}) == 4


def test_source_ip_hash_moves_few_keys_when_endpoint_added():
    clients = [f"198.18.{i // 250}.{i % 250}" for i in range(2000)]
    lb = Balancer(eps(1, 2, 3, 4), SOURCE_IP)
    before = [lb.next_endpoint(c) for c in clients]
    lb.update(eps(1, 2, 3, 4, 5))
    after = [lb.next_endpoint(c) for c in clients]
    moved = sum(1 for x, y in zip(before, after) if x != y)
    # Ideal is 1/5 of the keys, all to the new endpoint; modulo hashing would move ~80%.
    assert moved < 0.3 * len(clients)
    assert all(y == Endpoint("198.18.1.10", 5) for x, y in zip(before, after) if x != y)


def test_source_ip_hash_retry_moves_to_another_endpoint():
    lb = Balancer(eps(1, 2, 3), SOURCE_IP)
    tries = [lb.next_endpoint("198.18.3.3", reset_affinity=n > 0, attempt=n) for n in range(3)]
    assert len(set(tries)) == 3


def test_header_hash_uses_key_and_falls_back_to_round_robin():
    lb = Balancer(eps(1, 2, 3), HEADER, rng=random.Random(2))
    assert lb.needs_http_header
    users = [f"user-{i}".encode() for i in range(100)]
    first = [lb.next_endpoint("198.18.0.1", hash_key=u) for u in users]
    # Same header from another client lands on the same endpoint: the IP is not in the key.
    assert first == [lb.next_endpoint("198.18.0.2", hash_key=u) for u in users]
    assert len(set(first)) == 3
    order = lb.endpoints
    assert [lb.next_endpoint("198.18.0.1") for _ in range(3)] == list(order)


def test_header_hash_remove_endpoint_keeps_other_keys():
    users = [f"session-{i}".encode() for i in range(600)]
    lb = Balancer(eps(1, 2, 3), HEADER)
    before = {u: lb.next_endpoint(hash_key=u) for u in users}
    lb.update(eps(1, 2))
    for u in users:
        if before[u] != Endpoint("198.18.1.10", 3):
            assert lb.next_endpoint(hash_key=u) == before[u]


# -- locality tiers, health and panic (issue 13) -------------------------------------------------

from edgeproxy.forwarding.health import EndpointHealth, HealthSettings  # noqa: E402


def unhealthy(*dead, endpoints, clock):
    """A health tracker over ``endpoints`` in which ``dead`` are ejected."""
    h = EndpointHealth(HealthSettings(consecutive_failures=1), clock=clock)
    h.update(endpoints)
    for ep in dead:
        h.dial_failed(ep, clock(), "refused")
    return h


@pytest.mark.parametrize("kind", [LoadBalancerKind.ROUND_ROBIN, LoadBalancerKind.RANDOM,
                                  LoadBalancerKind.CONSISTENT_HASH_SOURCE_IP])
def test_first_tier_with_a_usable_endpoint_takes_every_connection(kind):
    clock = FakeClock()
    node, zone, rest = eps(1), eps(2, 3), eps(4, 5)
    h = unhealthy(endpoints=node + zone + rest, clock=clock)
    lb = Balancer(policy=LoadBalancerPolicy(kind), tiers=[node, zone, rest], health=h,
                  clock=clock, rng=random.Random(3))
    assert {lb.next_endpoint(f"10.0.0.{i}") for i in range(50)} == set(node)
    h.dial_failed(node[0], clock(), "refused")  # this node's pod is gone: the zone's next
    picked = Counter(lb.next_endpoint(f"10.0.0.{i}") for i in range(200))
    assert set(picked) == set(zone)
    assert not lb.panic


def test_round_robin_skips_ejected_and_keeps_going_round():
    clock = FakeClock()
    all_ = eps(1, 2, 3)
    h = unhealthy(all_[1], endpoints=all_, clock=clock)
    lb = Balancer(all_, health=h, clock=clock, rng=random.Random(1))
    got = [lb.next_endpoint() for _ in range(6)]
    assert all_[1] not in got and Counter(got) == {all_[0]: 3, all_[2]: 3}


def test_hash_ring_moves_only_the_keys_of_the_ejected_endpoint():
    clock = FakeClock()
    all_ = eps(1, 2, 3, 4)
    policy = LoadBalancerPolicy(LoadBalancerKind.CONSISTENT_HASH_SOURCE_IP)
    h = unhealthy(endpoints=all_, clock=clock)
    lb = Balancer(all_, policy, health=h, clock=clock)
    clients = [f"10.1.{i // 250}.{i % 250}" for i in range(1000)]
    before = {c: lb.next_endpoint(c) for c in clients}
    h.dial_failed(all_[0], clock(), "refused")
    after = {c: lb.next_endpoint(c) for c in clients}
    assert all_[0] not in after.values()
    moved = [c for c in clients if before[c] != after[c]]
    assert moved and all(before[c] == all_[0] for c in moved)


def test_affinity_pin_moves_off_an_ejected_endpoint_and_stays_on_the_new_one():
    clock = FakeClock()
    all_ = eps(1, 2, 3)
    h = unhealthy(endpoints=all_, clock=clock)
    lb = Balancer(all_, session_affinity=True, health=h, clock=clock, rng=random.Random(2))
    first = lb.next_endpoint(C1)
    assert lb.next_endpoint(C1) == first
    h.dial_failed(first, clock(), "refused")
    moved = lb.next_endpoint(C1)
    assert moved != first
    h.probe_done(first, True, clock())  # the old one is back: the client stays where it is now
    assert [lb.next_endpoint(C1) for _ in range(5)] == [moved] * 5


def test_panic_when_every_endpoint_is_ejected_tries_them_all():
    clock = FakeClock()
    node, rest = eps(1), eps(2, 3)
    h = unhealthy(*(node + rest), endpoints=node + rest, clock=clock)
    lb = Balancer(tiers=[node, rest], health=h, clock=clock, rng=random.Random(5))
    got = {lb.next_endpoint() for _ in range(60)}
    assert got == set(node + rest) and lb.panic and lb.panic_picks_total == 60
    h.probe_done(rest[0], True, clock())
    assert lb.next_endpoint() == rest[0] and not lb.panic


def test_slow_endpoint_is_passed_over_within_its_tier_only():
    clock = FakeClock()
    node, zone = eps(1, 2), eps(3)
    h = EndpointHealth(HealthSettings(slow_dial_min=0.02), clock=clock)
    h.update(node + zone)
    lb = Balancer(tiers=[node, zone], health=h, clock=clock, rng=random.Random(1))
    h.dial_started(node[0], clock.now)
    clock.now += 0.05  # its SYN has had no answer for 50 ms
    assert {lb.next_endpoint() for _ in range(10)} == {node[1]}
    h.dial_started(node[1], clock.now)
    clock.now += 0.05  # both of this node's are slow: still this node, not the zone
    assert {lb.next_endpoint() for _ in range(10)} <= set(node)


@pytest.mark.parametrize("with_health", [False, True])
def test_failover_avoids_the_endpoints_the_connection_already_tried(with_health):
    clock = FakeClock()
    all_ = eps(1, 2, 3)
    h = unhealthy(endpoints=all_, clock=clock) if with_health else None
    lb = Balancer(all_, health=h, clock=clock, rng=random.Random(4))
    for _ in range(20):
        first = lb.next_endpoint()
        lb.next_endpoint()  # another client moves the round-robin position meanwhile
        second = lb.next_endpoint(attempt=1, reset_affinity=True, avoid=[first])
        assert second != first
        third = lb.next_endpoint(attempt=2, reset_affinity=True, avoid=[first, second])
        assert third not in (first, second)
    # Everything tried: one of them again rather than nothing.
    assert lb.next_endpoint(attempt=3, avoid=all_) in all_


def test_hash_failover_walks_the_ring_past_what_was_tried():
    all_ = eps(1, 2, 3)
    lb = Balancer(all_, LoadBalancerPolicy(LoadBalancerKind.CONSISTENT_HASH_SOURCE_IP))
    first = lb.next_endpoint(C1)
    second = lb.next_endpoint(C1, attempt=1, avoid=[first])
    assert second != first and second == lb.next_endpoint(C1, attempt=1)


def test_hash_keys_stay_on_a_slow_endpoint_until_it_is_ejected():
    clock = FakeClock()
    all_ = eps(1, 2, 3)
    h = EndpointHealth(HealthSettings(slow_dial_min=0.01), clock=clock)
    h.update(all_)
    lb = Balancer(all_, LoadBalancerPolicy(LoadBalancerKind.CONSISTENT_HASH_SOURCE_IP),
                  health=h, clock=clock)
    owner = lb.next_endpoint(C1)
    h.dial_started(owner, clock.now)
    clock.now += 0.05  # its SYN has waited 50 ms: slow, not ejected
    assert lb.next_endpoint(C1) == owner
