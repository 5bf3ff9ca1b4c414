"""Reading and parsing manifests in a process of their own, with a memory and a time budget.

The daemon hands every file it must (re)load to `ParseWorker.load`; a child process
(``python -m edgeproxy.manifests.worker``) reads, parses and validates them
(`edgeproxy.manifests.loading.load_file`, exactly what ``edgeproxy validate`` runs in-process)
and sends back the objects. Why a process:

* **memory**: whatever a file makes the parser allocate is the child's, capped by
  ``RLIMIT_AS`` (a file over it is refused, "over the memory budget"), and returned to the
  system when the child is replaced (after a file that made it grow past ``recycle_rss``);
  the daemon's own memory never carries a parse's high-water mark;
* **time**: a file that takes longer than ``file_timeout`` (a parse gone pathological, a read
  stuck on a dead network filesystem) costs the child, not the sync loop: it is killed (never
  waited for), the file is refused "timed out", and a new child takes the rest;
* the child has no gevent and no threads: nothing of it can stall the hub.

The client side uses only raw descriptors, ``posix_spawn``, ``close`` and ``poll`` as the
standard library has them (the originals under gevent's patching, whose versions register
watchers with a hub) because it runs in a native thread of gevent's pool.

Frames on both pipes: 4-byte big-endian length + pickle. Request: ``(paths, root, policy,
limits)``; responses: ``("file", path, LoadResult)`` per file, then ``("done",)``.
"""

from __future__ import annotations

import os
import pickle
import signal
import struct
import sys
import time
from pathlib import Path
from typing import Iterable

from edgeproxy.manifests.loading import LoadResult, file_error
from edgeproxy.manifests.reader import TrustPolicy
from edgeproxy.model import LoadLimits

DEFAULT_MEMORY_LIMIT = 768 << 20  # address space of the child, bytes
DEFAULT_FILE_TIMEOUT = 10.0  # seconds one file may take (read + parse + validate)
DEFAULT_RECYCLE_RSS = 192 << 20  # a child grown past this is replaced after its batch
_HEADER = struct.Struct(">I")
MAX_FRAME = 1 << 30


def _original(module: str, name: str):
    try:
        from gevent.monkey import get_original

        return get_original(module, name)
    except ImportError:  # the child, or a tool without gevent
        return getattr(__import__(module), name)


class WorkerFailed(Exception):
    pass


class ParseWorker:
    """The daemon's side: one child at a time, started on demand, replaced when it fails."""

    def __init__(self, memory_limit: int = DEFAULT_MEMORY_LIMIT,
                 file_timeout: float = DEFAULT_FILE_TIMEOUT,
                 recycle_rss: int = DEFAULT_RECYCLE_RSS,
                 command: list[str] | None = None) -> None:
        self.memory_limit = memory_limit
        self.file_timeout = file_timeout
        self.recycle_rss = recycle_rss
        # -P: the current directory is not put on sys.path (the daemon may be started from
        # anywhere, as root: nothing found there may run in the worker).
        self.command = command or [sys.executable, "-P", "-m", "edgeproxy.manifests.worker"]
        self.pid: int | None = None
        self._to: int = -1
        self._from: int = -1
        self._buffer = b""
        self.starts_total = 0
        self.kills_total = 0  # children killed for a timeout or replaced after a crash
        self.recycles_total = 0  # children replaced to give their memory back

    # -- public --------------------------------------------------------------------------------
    def load(self, paths: Iterable[Path], root: Path, policy: TrustPolicy,
             limits: LoadLimits) -> dict[Path, LoadResult]:
        """Load every path; never raises for a file's sake (its result says what happened).

        The child answers in the order it was asked, so ``paths[done:]`` is what is still
        owed; the first of those is the file the child was on when it failed."""
        paths = list(paths)
        done = 0
        results: dict[Path, LoadResult] = {}
        crashes: dict[Path, int] = {}
        while done < len(paths):
            self._ensure_started()
            try:
                self._send((paths[done:], root, policy, limits))
                while True:
                    message = self._receive(self.file_timeout)
                    if message[0] == "done":
                        done = len(paths)
                        break
                    _, path, result = message
                    results[path] = result
                    done += 1
            except WorkerFailed as exc:
                self._kill()
                if done >= len(paths):
                    break  # it answered everything, then died (a file over its memory budget)
                culprit = paths[done]
                crashes[culprit] = crashes.get(culprit, 0) + 1
                if "timed out" in str(exc) or crashes[culprit] >= 2:
                    results[culprit] = LoadResult(
                        None, (), (file_error(culprit, str(exc)),), rejected=True)
                    done += 1
        self._recycle_if_grown()
        return results

    def close(self) -> None:
        """Stop the child without waiting for it (it may be stuck in a read)."""
        if self.pid is not None:
            _close_quietly(self._to)
            self._kill()

    # -- the child process ---------------------------------------------------------------------
    def _ensure_started(self) -> None:
        if self.pid is not None:
            return
        from edgeproxy.spawn import _spawn

        to_r, to_w = os.pipe2(os.O_CLOEXEC)
        from_r, from_w = os.pipe2(os.O_CLOEXEC)
        try:
            self.pid = _spawn([*self.command, str(self.memory_limit)], to_r, from_w, 2)
        except OSError:
            _close_quietly(to_w)
            _close_quietly(from_r)
            raise
        finally:
            _close_quietly(to_r)
            _close_quietly(from_w)
        self._to, self._from, self._buffer = to_w, from_r, b""
        self.starts_total += 1

    def _kill(self) -> None:
        pid, self.pid = self.pid, None
        for fd in (self._to, self._from):
            _close_quietly(fd)
        self._to = self._from = -1
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.kills_total += 1
        _reap_later(pid)

    def _recycle_if_grown(self) -> None:
        if self.pid is None:
            return
        try:
            with open(f"/proc/{self.pid}/statm") as statm:
                rss = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return
        if rss > self.recycle_rss:
            self.recycles_total += 1
            self._kill()
            self.kills_total -= 1  # a recycle, not a failure

    # -- frames --------------------------------------------------------------------------------
    def _send(self, message: object) -> None:
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        view = memoryview(_HEADER.pack(len(data)) + data)
        try:
            while view:
                view = view[os.write(self._to, view):]
        except OSError as exc:
            raise WorkerFailed(f"manifest worker gone: {exc}") from None

    def _receive(self, timeout: float) -> tuple:
        deadline = time.monotonic() + timeout
        poller = _original("select", "poll")()
        poller.register(self._from, 0x001 | 0x008 | 0x010)  # POLLIN | POLLERR | POLLHUP
        while True:
            if len(self._buffer) >= _HEADER.size:
                (size,) = _HEADER.unpack_from(self._buffer)
                if size > MAX_FRAME:
                    raise WorkerFailed("manifest worker sent garbage")
                if len(self._buffer) >= _HEADER.size + size:
                    frame = self._buffer[_HEADER.size:_HEADER.size + size]
                    self._buffer = self._buffer[_HEADER.size + size:]
                    return pickle.loads(frame)
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not poller.poll(remaining * 1000):
                raise WorkerFailed(f"reading and parsing took more than {timeout:g} s: "
                                   "timed out, refused")
            data = os.read(self._from, 1 << 20)
            if not data:
                raise WorkerFailed("the manifest worker died while loading this file (over "
                                   "its memory or time budget?)")
            self._buffer += data


def _close_quietly(fd: int) -> None:
    if fd >= 0:
        try:
            _original("os", "close")(fd)
        except OSError:
            pass


def _reap_later(pid: int) -> None:
    """Collect a killed child if it is gone already; a child stuck in the kernel (a hung NFS
    read) is never waited for. gevent's SIGCHLD handling reaps whatever is left."""
    try:
        _original("os", "waitpid")(pid, os.WNOHANG)
    except ChildProcessError:
        pass


# -- the child ---------------------------------------------------------------------------------

def _child_main(argv: list[str]) -> int:
    import gc
    import resource

    from edgeproxy.manifests.loading import load_file
    from edgeproxy.manifests.reader import TrustContext

    limit = int(argv[0]) if argv else DEFAULT_MEMORY_LIMIT
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer

    def send(message: object) -> None:
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        stdout.write(_HEADER.pack(len(data)) + data)
        stdout.flush()

    while True:
        header = stdin.read(_HEADER.size)
        if len(header) < _HEADER.size:
            return 0
        (size,) = _HEADER.unpack(header)
        paths, root, policy, limits = pickle.loads(stdin.read(size))
        context = TrustContext(Path(root), policy)
        for path in paths:
            gc.disable()  # one parse allocates millions of objects and frees none early
            try:
                result = load_file(path, context, limits)
            except MemoryError:
                send(("file", path, LoadResult(None, (), (file_error(
                    path, f"parsing it needs more than the {limit >> 20} MiB memory "
                          "budget: refused"),), rejected=True)))
                return 3  # a process that ran out of memory is not reused
            finally:
                gc.enable()
            send(("file", path, result))
        send(("done",))


if __name__ == "__main__":
    raise SystemExit(_child_main(sys.argv[1:]))
