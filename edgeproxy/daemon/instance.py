"""One daemon per node: an exclusive lock held for the life of `edgeproxy run`.

Two daemons on one node rewrite each other's chains about once a second and allocate
different proxy ports for the same services, and the one that exits removes the interface the
other serves through. So `edgeproxy run` takes ``flock(LOCK_EX | LOCK_NB)`` on
``<state dir>/edgeproxy.lock`` (``/run/edgeproxy`` by default, the unit's RuntimeDirectory)
before it touches any rule, interface, port or sysctl, and writes its PID there. A second
instance exits at once with status 1, naming the first one's PID.

The lock belongs to the open file: it goes when the process dies, however it dies (no stale
lock after a SIGKILL), and the descriptor is close-on-exec, so no iptables-restore child
keeps it. With the lock held, whatever edgeproxy's names denote on the node (the
``KUBE-PORTALS-*`` chains, the ``edgeproxy`` nft table, the listen interface, host routes on
it) is ours to adopt: only a run of ours that was killed can have left it.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

LOCK_NAME = "edgeproxy.lock"


class AlreadyRunning(Exception):
    def __init__(self, path: Path, pid: int | None) -> None:
        self.path = path
        self.pid = pid
        who = f"PID {pid}" if pid else "a process"
        super().__init__(f"another edgeproxy ({who}) already runs on this node: it holds "
                         f"{path}; stop it first (systemctl stop edgeproxy)")


class InstanceLock:
    def __init__(self, fd: int, path: Path) -> None:
        self.fd = fd
        self.path = path

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _holder_pid(fd: int) -> int | None:
    """The PID the lock's holder wrote into the file, None when unreadable."""
    try:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
    except OSError:
        return None
    return int(holder) if holder.isdigit() else None


def acquire(state_dir: Path) -> InstanceLock:
    """Take the node's lock or raise AlreadyRunning (OSError when the dir is unusable)."""
    state_dir = Path(state_dir)
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = state_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = _holder_pid(fd)
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise AlreadyRunning(path, holder) from None
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return InstanceLock(fd, path)


def running_instance(state_dir: Path) -> int | None:
    """The PID of the edgeproxy that holds this node's lock (0 if unknown), None when none
    runs. Creates nothing: for commands that must not act under a running daemon."""
    path = Path(state_dir) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return _holder_pid(fd) or 0
            return None
        return None
    finally:
        os.close(fd)
