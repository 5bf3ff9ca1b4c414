"""Zero-copy plumbing: a small, bounded pool of kernel pipes for ``os.splice``.

A TCP relay moves bytes socket -> pipe -> socket without copying them through Python. Pipes are
a scarce resource (without CAP_SYS_RESOURCE a user gets about a thousand 64 KiB pipes), so a
direction borrows a pipe only while data sits in it and gives it back as soon as it is drained:
idle connections hold no pipe at all. When the pool is exhausted, or splice is not supported
for a pair of descriptors (EINVAL), the relay falls back to recv/send through a shared buffer.
"""

from __future__ import annotations

import errno
import fcntl
import os

F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)
HAVE_SPLICE = hasattr(os, "splice")

# Bytes asked per splice: the pipe capacity. Larger pipes mean fewer system calls per MB on
# bulk transfers; memory is only used for bytes actually in flight.
DEFAULT_PIPE_SIZE = 1 << 20
DEFAULT_POOL_SIZE = 64      # pipes kept open for reuse
DEFAULT_MAX_PIPES = 512     # pipes in existence at once (pool + borrowed)


class Pipe:
    __slots__ = ("r", "w", "size")

    def __init__(self, size: int) -> None:
        self.r, self.w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            fcntl.fcntl(self.w, F_SETPIPE_SZ, size)
        except OSError:
            pass  # above pipe-max-size or the user's pipe quota: keep the default 64 KiB
        self.size = fcntl.fcntl(self.w, 1032)  # F_GETPIPE_SZ

    def close(self) -> None:
        os.close(self.r)
        os.close(self.w)


class PipePool:
    """Borrow a pipe with `get` (None when the bound is reached), return it empty with `put`."""

    def __init__(self, pipe_size: int = DEFAULT_PIPE_SIZE, pool_size: int = DEFAULT_POOL_SIZE,
                 max_pipes: int = DEFAULT_MAX_PIPES) -> None:
        self.pipe_size = pipe_size
        self.pool_size = pool_size
        self.max_pipes = max_pipes
        self._free: list[Pipe] = []
        self.open_pipes = 0
        self.enabled = HAVE_SPLICE

    def get(self) -> Pipe | None:
        if self._free:
            return self._free.pop()
        if not self.enabled or self.open_pipes >= self.max_pipes:
            return None
        try:
            pipe = Pipe(self.pipe_size)
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOMEM):
                return None
            raise
        self.open_pipes += 1
        return pipe

    def put(self, pipe: Pipe) -> None:
        """Return an *empty* pipe (a pipe with stale bytes must be `discard`ed instead)."""
        if len(self._free) < self.pool_size:
            self._free.append(pipe)
        else:
            self.discard(pipe)

    def discard(self, pipe: Pipe) -> None:
        self.open_pipes -= 1
        pipe.close()

    def close(self) -> None:
        while self._free:
            self.discard(self._free.pop())
