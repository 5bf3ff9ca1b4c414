"""Entering a named network namespace from the calling thread: the one way edgeproxy does it.

`entered` and `enter_for_good` are the only setns(2) calls in edgeproxy. The rule backends'
in-process kernel reads (rules/nfnetlink.py, rules/xtables.py) open their socket in the
namespace their commands run in (tests, benchmarks and the demo run backends in namespaces of
their own), and the demo's namespaces (`edgeproxy.demo.netns`) make client sockets inside them.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from typing import Iterator

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def netns_path(name: str) -> str:
    """Where ``ip netns add NAME`` keeps the namespace."""
    return f"/run/netns/{name}"


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def entered(name: str | None) -> Iterator[None]:
    """Run the block with the calling thread inside the named namespace (None: where it is).

    setns moves the calling thread only; sockets made in the block stay in that namespace
    after it ends. The thread returns to the namespace it came from, or the block's end
    raises OSError (a thread must never go on in the wrong namespace)."""
    if name is None:
        yield
        return
    with open("/proc/thread-self/ns/net") as original, open(netns_path(name)) as target:
        _setns(target.fileno())
        try:
            yield
        finally:
            _setns(original.fileno())


def enter_for_good(name: str) -> None:
    """Move the calling thread into the named namespace for the rest of its life."""
    with open(netns_path(name)) as target:
        _setns(target.fileno())
