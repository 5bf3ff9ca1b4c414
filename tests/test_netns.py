"""edgeproxy.netns: the thread enters a named namespace and comes back."""

from __future__ import annotations

import os

import pytest

from edgeproxy.demo.netns import NetNS, netns_unavailable_reason
from edgeproxy.netns import entered

pytestmark = pytest.mark.netns


@pytest.fixture(autouse=True)
def _root_only():
    reason = netns_unavailable_reason()
    if reason:
        pytest.skip(reason)


def test_entered_by_name_returns_the_thread_and_refuses_a_missing_namespace():
    own = os.readlink("/proc/thread-self/ns/net")
    with entered(None):
        assert os.readlink("/proc/thread-self/ns/net") == own
    with NetNS("eptest") as ns:
        with entered(ns.name):
            assert os.readlink("/proc/thread-self/ns/net") != own
        assert os.readlink("/proc/thread-self/ns/net") == own
    with pytest.raises(OSError):
        with entered("eptest-no-such-namespace"):
            pass
    assert os.readlink("/proc/thread-self/ns/net") == own
