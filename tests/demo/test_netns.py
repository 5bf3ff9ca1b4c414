"""edgeproxy.demo.netns: namespaces are created, isolated, connected and really deleted."""

from __future__ import annotations

import socket
import subprocess

import pytest

from edgeproxy.demo import netns as nsmod
from edgeproxy.demo.netns import NetNS, veth_pair

pytestmark = pytest.mark.netns


@pytest.fixture(autouse=True)
def _root_only():
    reason = nsmod.netns_unavailable_reason()
    if reason:
        pytest.skip(reason)


def _exists(name: str) -> bool:
    return name in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                  text=True).stdout.split()


def test_namespace_is_created_isolated_and_deleted():
    with NetNS("eptest") as ns:
        assert _exists(ns.name)
        links = ns.run(["ip", "-o", "link"]).stdout
        assert "lo" in links and "state UNKNOWN" in links  # loopback up
        assert len(links.splitlines()) == 1  # nothing of the host's interfaces
    assert not _exists(ns.name)


def test_entered_sockets_stay_in_the_namespace():
    with NetNS("eptest") as ns:
        ns.run(["ip", "addr", "add", "198.18.250.1/32", "dev", "lo"])
        with ns.entered():
            sock = socket.socket()
            sock.bind(("198.18.250.1", 0))  # only exists inside
        with sock:
            sock.listen()
            # Back outside the thread is in the host namespace: the address is not there.
            with pytest.raises(OSError):
                socket.socket().bind(("198.18.250.1", 0))
            ns.run(["bash", "-c", f"echo > /dev/tcp/198.18.250.1/{sock.getsockname()[1]}"])


def test_veth_pair_connects_two_namespaces():
    with NetNS("eptest") as left, NetNS("eptest") as right:
        veth_pair(left, right, ["198.18.251.1/24"], ["198.18.251.2/24", "198.18.251.3/24"])
        with right.entered():
            server = socket.create_server(("198.18.251.3", 0))
        with server, left.entered():
            socket.create_connection(server.getsockname(), timeout=2).close()


def test_delete_kills_what_runs_inside_and_delete_all_live_removes_everything():
    ns = NetNS("eptest").create()
    proc = ns.popen(["sleep", "60"])
    other = NetNS("eptest").create()
    nsmod.delete_all_live()
    assert proc.wait(timeout=5) != 0
    assert not _exists(ns.name) and not _exists(other.name)


def test_failed_command_names_the_namespace():
    with NetNS("eptest") as ns:
        with pytest.raises(RuntimeError, match=ns.name):
            ns.run(["ip", "link", "set", "nosuchdev", "up"])
