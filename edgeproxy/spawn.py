"""Running the node's tools (iptables-restore, nft, ip, conntrack) without stalling the hub.

gevent.subprocess forks the whole interpreter: with 10,000 services loaded the daemon holds
hundreds of MB, and copying its page tables takes 10-30 ms per command during which nothing
else runs (measured: 32 ms at 624 MB RSS, against 0.9 ms here). The periodic rule check alone
runs several commands a second. `run` starts the program with ``posix_spawn`` (glibc uses
``CLONE_VM|CLONE_VFORK``: no page tables copied), talks to it through non-blocking pipes and
waits for its exit with a libev child watcher, so the hub keeps forwarding meanwhile.

Works inside the daemon's hub, and in plain (unpatched) command-line use, where the calling
thread simply runs gevent's loop until the command is done. Not for native threads other than
the one that owns the hub.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
from typing import Sequence

import gevent
import gevent.event
from gevent.socket import wait_read, wait_write

DEFAULT_TIMEOUT = 60.0
MAX_OUTPUT = 64 << 20  # an iptables-save of 100,000 rules is ~15 MB; beyond this is a bug

# Signals Python ignores that a child must see with their default action (as subprocess does
# with restore_signals=True): a tool writing to a closed pipe should die, not spin.
_DEFAULT_SIGNALS = tuple(getattr(signal, name) for name in ("SIGPIPE", "SIGXFSZ")
                         if hasattr(signal, name))


def _read_all(fd: int, chunks: list[bytes]) -> None:
    size = 0
    while True:
        try:
            data = os.read(fd, 1 << 16)
        except BlockingIOError:
            wait_read(fd)
            continue
        if not data:
            return
        size += len(data)
        if size > MAX_OUTPUT:
            raise OSError(errno.EFBIG, f"command output over {MAX_OUTPUT} bytes")
        chunks.append(data)


def _write_all(fd: int, data: bytes, open_fds: set[int]) -> None:
    view = memoryview(data)
    try:
        while view:
            try:
                view = view[os.write(fd, view):]
            except BlockingIOError:
                wait_write(fd)
    except BrokenPipeError:
        pass  # the tool exited without reading everything: its exit status tells why
    finally:
        open_fds.discard(fd)
        os.close(fd)  # EOF: iptables-restore and nft -f only act once their input ends


def run(argv: Sequence[str], input: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT) -> "subprocess.CompletedProcess[str]":
    """Like ``subprocess.run(argv, input=input, capture_output=True, text=True,
    timeout=timeout)``; raises FileNotFoundError for a missing program and
    subprocess.TimeoutExpired (after killing it) when it overruns."""
    argv = list(argv)
    hub = gevent.get_hub()
    hub.loop.install_sigchld()  # libev reaps children and reports them to child watchers
    stdin_r, stdin_w = os.pipe2(os.O_CLOEXEC)
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    parent_ends = [stdin_w, out_r, err_r]
    try:
        pid = os.posix_spawnp(argv[0], argv, os.environ, setsigdef=_DEFAULT_SIGNALS,
                              file_actions=[(os.POSIX_SPAWN_DUP2, stdin_r, 0),
                                            (os.POSIX_SPAWN_DUP2, out_w, 1),
                                            (os.POSIX_SPAWN_DUP2, err_w, 2)])
    except OSError:
        for fd in parent_ends:
            os.close(fd)
        raise
    finally:
        for fd in (stdin_r, out_w, err_w):
            os.close(fd)
    # Started before anything yields to the loop: libev may reap the child on the next loop
    # iteration, and only a watcher that exists then gets its status.
    exited = gevent.event.Event()
    watcher = hub.loop.child(pid, False)
    watcher.start(exited.set)
    for fd in parent_ends:
        os.set_blocking(fd, False)
    open_fds = set(parent_ends)
    out: list[bytes] = []
    err: list[bytes] = []
    workers = [gevent.spawn(_read_all, out_r, out), gevent.spawn(_read_all, err_r, err),
               gevent.spawn(_write_all, stdin_w, (input or "").encode(), open_fds)]
    try:
        finished = gevent.joinall(workers, timeout=timeout, raise_error=True)
        if len(finished) < len(workers) or not exited.wait(timeout):
            os.kill(pid, signal.SIGKILL)
            exited.wait(5)
            raise subprocess.TimeoutExpired(argv, timeout or 0.0,
                                            b"".join(out), b"".join(err))
    finally:
        gevent.killall(workers)
        watcher.stop()
        for fd in open_fds:
            os.close(fd)
        if not exited.is_set():
            try:  # never leave a zombie behind, whatever went wrong above
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    returncode = os.waitstatus_to_exitcode(watcher.rstatus)
    return subprocess.CompletedProcess(argv, returncode, b"".join(out).decode(errors="replace"),
                                       b"".join(err).decode(errors="replace"))
