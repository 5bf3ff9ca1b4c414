"""Reading a manifest file safely: what may be opened, and how, in a directory nobody vouches for.

The manifest directory is input from the network's side even when root owns it: a mirror
writes there, and whoever can write there steers the node's traffic. So before a byte is
parsed, `read_manifest`:

* **contains it**: the file's real path (every symlink resolved) must lie under the manifest
  root's real path or under a trusted root the operator named. ConfigMap volumes (visible
  symlinks into ``..data``) and git-sync (the root itself a symlink to the current worktree)
  stay inside; ``shadow.yaml -> /etc/shadow`` does not;
* **opens it without following or blocking**: ``O_NONBLOCK | O_NOFOLLOW`` on the resolved path
  (a FIFO then opens at once instead of waiting for a writer; a last component swapped for a
  symlink since the check fails), then ``fstat`` on the descriptor: anything but a regular file
  (FIFO, socket, device) is refused;
* **checks who could have written it** (`TrustPolicy.require_root_owned`, the daemon as root):
  the file, every directory from it up to its root, and the root's ancestors (where a
  world-writable directory is accepted only with the sticky bit, like /tmp) must be owned by
  root and not writable by group or other, on every read, not only at start;
* **reads a bounded amount**, and reports a file that changed while it was read (a writer is
  still at it: `ReadRefused.retry`).
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable


class ReadRefused(Exception):
    """A file that is not read; ``retry`` when it is probably still being written."""

    def __init__(self, message: str, retry: bool = False) -> None:
        super().__init__(message)
        self.retry = retry


@dataclass(frozen=True)
class TrustPolicy:
    """Where manifests may come from and who may have written them."""

    trusted_roots: tuple[Path, ...] = ()  # besides the manifest root itself
    require_root_owned: bool = False
    owner_uid: int = 0


def trust_policy(trusted_roots: Iterable[str | Path] = (),
                 allow_insecure: bool = False) -> TrustPolicy:
    """The policy `edgeproxy run` and `edgeproxy validate` apply: the ownership rule whenever
    they run as root, unless the operator said --allow-insecure-manifests."""
    return TrustPolicy(trusted_roots=tuple(Path(r) for r in trusted_roots),
                       require_root_owned=os.geteuid() == 0 and not allow_insecure)


@dataclass
class TrustContext:
    """One refresh's view of the trust boundary: resolved roots and directory verdicts (a
    directory is judged once per refresh, not once per file in it)."""

    root: Path
    policy: TrustPolicy
    allowed: tuple[Path, ...] = ()
    # Keyed by (directory, judged as an ancestor): a sticky world-writable directory passes as
    # an ancestor of a root but not inside one, so one verdict must not stand for the other.
    _verdicts: dict[tuple[Path, bool], str | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        roots = [self.root, *self.policy.trusted_roots]
        self.allowed = tuple(Path(os.path.realpath(r)) for r in roots)

    def allowed_base(self, real: Path) -> Path | None:
        for base in self.allowed:
            if real == base or base in real.parents:
                return base
        return None

    def contained(self, path: Path) -> Path:
        """The real path of ``path``; ReadRefused when it leads outside every allowed root."""
        real = Path(os.path.realpath(path))
        if self.allowed_base(real) is None:
            raise ReadRefused(f"resolves to {real}, outside the manifest root "
                              f"{self.allowed[0]}: refused (name it in trustedManifestRoots "
                              "to allow it)")
        return real

    # -- ownership -----------------------------------------------------------------------------
    def owner_problem(self, st: os.stat_result, what: str, sticky_ok: bool = False) -> str | None:
        uid = self.policy.owner_uid
        if st.st_uid != uid:
            return f"{what} is owned by uid {st.st_uid}, not {uid}"
        writable = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        if writable and not (sticky_ok and st.st_mode & stat.S_ISVTX):
            return f"{what} is writable by group or other (mode {stat.S_IMODE(st.st_mode):04o})"
        return None

    def directory_problem(self, directory: Path, ancestor: bool) -> str | None:
        if (directory, ancestor) in self._verdicts:
            return self._verdicts[directory, ancestor]
        try:
            st = os.stat(directory)
        except OSError as exc:
            verdict: str | None = f"directory {directory} cannot be read: {exc.strerror or exc}"
        else:
            verdict = self.owner_problem(st, f"directory {directory}", sticky_ok=ancestor)
        self._verdicts[directory, ancestor] = verdict
        return verdict

    def chain_problem(self, real: Path) -> str | None:
        """The first insecure directory from ``real``'s parent up to its allowed root, then the
        root's ancestors (up to /)."""
        base = self.allowed_base(real)
        assert base is not None
        if real != base:  # a root that is one file (`validate FILE`) has no inner directories
            directory = real.parent
            while True:
                problem = self.directory_problem(directory, ancestor=False)
                if problem or directory == base or directory == directory.parent:
                    break
                directory = directory.parent
            if problem:
                return problem
        for ancestor in base.parents:
            problem = self.directory_problem(ancestor, ancestor=True)
            if problem:
                return problem
        return None

    def root_problems(self, configured_root: Path) -> list[str]:
        """Problems of the root itself and of every directory above it, as configured (where a
        symlinked root's link lives: whoever can write there can swap it) and resolved."""
        if not self.policy.require_root_owned:
            return []
        problems = []
        for directory in [*Path(os.path.abspath(configured_root)).parents, *self.allowed[:1],
                          *self.allowed[0].parents]:
            if not os.path.lexists(directory):
                continue  # a root that is not there yet (a mount, git-sync's first clone)
            problem = self.directory_problem(directory, ancestor=directory != self.allowed[0])
            if problem and problem not in problems:
                problems.append(problem)
        return problems


_OPEN_FLAGS = (os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC
               | getattr(os, "O_NOCTTY", 0))


def read_manifest(path: Path, context: TrustContext,
                  max_bytes: int) -> tuple[bytes, os.stat_result]:
    """The bytes of the manifest at ``path`` and the ``fstat`` of what was read (see the module
    docstring); ReadRefused else."""
    real = context.contained(path)
    try:
        fd = os.open(real, _OPEN_FLAGS)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # the last component became a symlink after resolving
            raise ReadRefused("changed into a symlink while being opened", retry=True) from None
        if exc.errno == errno.ENOENT:  # deleted or renamed away meanwhile
            raise ReadRefused("vanished while being opened", retry=True) from None
        raise ReadRefused(f"cannot open: {exc.strerror or exc}") from None
    try:
        # O_NOFOLLOW guards the last component only: a directory on the way swapped for a
        # symlink between resolving and opening would lead elsewhere. What was opened is
        # what the descriptor names; it must still be inside.
        try:
            opened = Path(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:  # no /proc: the resolve-then-O_NOFOLLOW check has to do
            opened = real
        if opened != real and context.allowed_base(opened) is None:
            raise ReadRefused(f"changed while being opened: now {opened}, outside the "
                              "manifest root: refused")
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = ("a FIFO" if stat.S_ISFIFO(st.st_mode) else
                    "a socket" if stat.S_ISSOCK(st.st_mode) else
                    "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else
                    "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file")
            raise ReadRefused(f"is {kind}, not a regular file: refused")
        if context.policy.require_root_owned:
            problem = context.owner_problem(st, "the file") or context.chain_problem(real)
            if problem:
                raise ReadRefused(f"{problem}; whoever can write there steers this node's "
                                  "traffic: refused (--allow-insecure-manifests overrides)")
        if st.st_size > max_bytes:
            raise ReadRefused(f"file is {st.st_size} bytes, over the {max_bytes}-byte limit")
        chunks = []
        size = 0
        while True:
            chunk = os.read(fd, min(1 << 20, max_bytes + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > max_bytes:
                raise ReadRefused(f"file is over the {max_bytes}-byte limit (grew while read)")
        after = os.fstat(fd)
        if (after.st_size, after.st_mtime_ns) != (st.st_size, st.st_mtime_ns) \
                or size != st.st_size:
            raise ReadRefused("changed while being read", retry=True)
        return b"".join(chunks), st
    finally:
        os.close(fd)
