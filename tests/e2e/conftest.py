"""Fixtures for the end-to-end tests: a namespaced edge node and the real daemon process."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator, Sequence

import pytest

from edgeproxy.demo.netns import netns_unavailable_reason
from edgeproxy.demo.topology import Topology
from tests.e2e.harness import DAEMON_ARGS
from tests.support.node import Daemon


@pytest.fixture
def topo() -> Iterator[Topology]:
    """pod, node and backends namespaces with the example backends running."""
    reason = netns_unavailable_reason()
    if reason:
        pytest.skip(reason)
    with Topology("epe2e") as topology:
        yield topology


@pytest.fixture
def start_daemon(topo: Topology, tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """start_daemon(manifests, extra_args=(), ready=True, workdir=None) -> Daemon in the node namespace.
    Every daemon started is stopped afterwards; its log is printed (shown when a test fails)."""
    daemons: list[Daemon] = []

    def start(manifests: Path, extra_args: Sequence[str] = (), ready: bool = True,
              workdir: Path | None = None) -> Daemon:
        # Reusing `workdir` reuses the state dir, as a restart under systemd does (/run).
        daemon = Daemon(topo.node, manifests, workdir or tmp_path / f"daemon{len(daemons)}",
                           extra_args=[*DAEMON_ARGS, *extra_args])
        daemons.append(daemon)
        daemon.start()
        if ready:
            daemon.wait_ready(timeout=20)
        return daemon

    yield start
    for daemon in daemons:
        daemon.stop(timeout=5)
        print(f"--- log of {' '.join(daemon.command())}\n{daemon.log_tail(60)}")
