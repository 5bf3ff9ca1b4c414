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
import socket
import subprocess
import time
from typing import Sequence

import gevent
import gevent.event
import gevent.monkey
from gevent.socket import wait_read, wait_write

# gevent (25.8+) monkey-patches os.close to close an fd only after the loop's next iteration
# (protection for fds still registered with a watcher). For the stdin of a tool that waits for
# EOF that means: no EOF until something else wakes the loop, and the tool and we wait on
# each other until the timeout. Our fds have no active watcher when we close them (every
# wait_read/wait_write has returned), so the real close is right.
_close = gevent.monkey.get_original("os", "close")

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
        _close(fd)  # EOF: iptables-restore and nft -f only act once their input ends


def _wait_exit(pid: int, exited: gevent.event.Event, watcher, status: list[int],
               timeout: float | None) -> bool:
    """Wait for the child's exit and put its wait status in ``status``; False on timeout.

    Normally libev's SIGCHLD handling reaps the child and reports it to ``watcher``. But any
    code that sets SIGCHLD to SIG_DFL/SIG_IGN through the (patched) signal module turns that
    handling off until the next gevent.subprocess call, and the watcher would never fire. So
    we also watch a pidfd, readable once the process has exited, and reap it ourselves;
    whichever comes first gives the status (without pidfd, kernels before 5.3: polling)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    pidfd = -1
    if hasattr(os, "pidfd_open"):
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:  # kernel before 5.3, or the child is already reaped
            pidfd = -1
    try:
        delay = 0.001
        while True:
            if exited.is_set():
                status.append(watcher.rstatus)
                return True
            try:
                reaped, wait_status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                reaped = 0  # libev reaped it: its watcher callback runs on the next iteration
                wait_status = 0
            if reaped == pid:
                status.append(wait_status)
                return True
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            if pidfd >= 0:
                try:
                    wait_read(pidfd, timeout=remaining if remaining is not None else None)
                except socket.timeout:
                    return False
                gevent.sleep(0)  # let a pending libev child callback run first
            else:  # no pidfd: poll, backing off to 50 ms
                exited.wait(delay if remaining is None else min(delay, remaining))
                delay = min(delay * 2, 0.05)
    finally:
        if pidfd >= 0:
            _close(pidfd)


# The standard library's posix_spawnp: gevent's patched one also registers a child watcher with
# the calling thread's hub, which callers here do themselves (run, Child) or cannot have (the
# parse worker's client runs in a native thread of gevent's pool).
_posix_spawnp = gevent.monkey.get_original("os", "posix_spawnp")


def _spawn(argv: list[str], stdin: int, stdout: int, stderr: int) -> int:
    """posix_spawn ``argv`` with the given fds as its 0, 1 and 2; returns the pid. Usable from
    any thread."""
    return _posix_spawnp(argv[0], argv, os.environ, setsigdef=_DEFAULT_SIGNALS,
                         file_actions=[(os.POSIX_SPAWN_DUP2, stdin, 0),
                                       (os.POSIX_SPAWN_DUP2, stdout, 1),
                                       (os.POSIX_SPAWN_DUP2, stderr, 2)])


def _watch_exit(pid: int) -> tuple[gevent.event.Event, object]:
    # Started before anything yields to the loop: where gevent.subprocess installed libev's
    # SIGCHLD handler, libev reaps every child on its next iteration, and only a watcher that
    # exists then gets the exit status.
    exited = gevent.event.Event()
    watcher = gevent.get_hub().loop.child(pid, False)
    watcher.start(exited.set)
    return exited, watcher


def run(argv: Sequence[str], input: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT) -> "subprocess.CompletedProcess[str]":
    """Like ``subprocess.run(argv, input=input, capture_output=True, text=True,
    timeout=timeout)``; raises FileNotFoundError for a missing program and
    subprocess.TimeoutExpired (after killing it) when it overruns."""
    argv = list(argv)
    gevent.get_hub().loop.install_sigchld()  # libev reaps children, reports to watchers
    stdin_r, stdin_w = os.pipe2(os.O_CLOEXEC)
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    parent_ends = [stdin_w, out_r, err_r]
    try:
        pid = _spawn(argv, stdin_r, out_w, err_w)
    except OSError:
        for fd in parent_ends:
            _close(fd)
        raise
    finally:
        for fd in (stdin_r, out_w, err_w):
            _close(fd)
    exited, watcher = _watch_exit(pid)
    status: list[int] = []
    for fd in parent_ends:
        os.set_blocking(fd, False)
    open_fds = set(parent_ends)
    out: list[bytes] = []
    err: list[bytes] = []
    workers = [gevent.spawn(_read_all, out_r, out), gevent.spawn(_read_all, err_r, err),
               gevent.spawn(_write_all, stdin_w, (input or "").encode(), open_fds)]
    try:
        finished = gevent.joinall(workers, timeout=timeout, raise_error=True)
        if len(finished) < len(workers) or not _wait_exit(pid, exited, watcher, status,
                                                          timeout):
            os.kill(pid, signal.SIGKILL)
            _wait_exit(pid, exited, watcher, status, 5.0)
            raise subprocess.TimeoutExpired(argv, timeout or 0.0,
                                            b"".join(out), b"".join(err))
    finally:
        gevent.killall(workers)
        watcher.stop()
        for fd in open_fds:
            _close(fd)
        if not status:
            try:  # never leave a zombie behind, whatever went wrong above
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, os.WNOHANG)
            except (ProcessLookupError, ChildProcessError):
                pass
    returncode = os.waitstatus_to_exitcode(status[0])
    return subprocess.CompletedProcess(argv, returncode, b"".join(out).decode(errors="replace"),
                                       b"".join(err).decode(errors="replace"))


class Child:
    """A long-running program: a pipe to its stdin, one from its stdout and stderr together.

    For helpers that live as long as the daemon (the directory watcher): the hub reads their
    output line by line like any socket and sees their exit through the same child watcher
    and pidfd as `run`."""

    def __init__(self, argv: Sequence[str], max_line: int = 1 << 20) -> None:
        self.argv = list(argv)
        self.max_line = max_line
        gevent.get_hub().loop.install_sigchld()
        stdin_r, self._stdin = os.pipe2(os.O_CLOEXEC)
        self._out, out_w = os.pipe2(os.O_CLOEXEC)
        try:
            self.pid = _spawn(self.argv, stdin_r, out_w, out_w)
        except OSError:
            _close(self._stdin)
            _close(self._out)
            raise
        finally:
            _close(stdin_r)
            _close(out_w)
        self._exited, self._watcher = _watch_exit(self.pid)
        self._status: list[int] = []
        os.set_blocking(self._stdin, False)
        os.set_blocking(self._out, False)
        self._buffer = b""

    def readline(self) -> bytes | None:
        """The next line of output (without its newline); None at end of output. A line
        longer than ``max_line`` is cut there (the rest comes as the next line)."""
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0 or len(self._buffer) >= self.max_line:
                cut = end if end >= 0 else self.max_line
                line, self._buffer = self._buffer[:cut], self._buffer[cut + 1 if end >= 0 else cut:]
                return line
            if self._out < 0:
                return None
            try:
                data = os.read(self._out, 1 << 16)
            except BlockingIOError:
                wait_read(self._out)
                continue
            if not data:
                _close(self._out)
                self._out = -1
                if self._buffer:
                    line, self._buffer = self._buffer, b""
                    return line
                return None
            self._buffer += data

    def send(self, data: bytes) -> bool:
        """Write without waiting; False when the pipe is full or the child is gone."""
        if self._stdin < 0:
            return False
        try:
            return os.write(self._stdin, data) == len(data)
        except (BlockingIOError, BrokenPipeError):
            return False

    def close_stdin(self) -> None:
        if self._stdin >= 0:
            _close(self._stdin)
            self._stdin = -1

    def wait(self, timeout: float | None = None) -> int | None:
        """The exit code (negative: killed by that signal); None if still running."""
        if not self._status and not _wait_exit(self.pid, self._exited, self._watcher,
                                               self._status, timeout):
            return None
        return os.waitstatus_to_exitcode(self._status[0])

    def stop(self, grace: float = 2.0) -> int | None:
        """Close its stdin (our helpers exit on end of input), SIGKILL after ``grace``."""
        self.close_stdin()
        code = self.wait(grace)
        if code is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            code = self.wait(5.0)
        self._watcher.stop()
        if self._out >= 0:
            _close(self._out)
            self._out = -1
        return code
