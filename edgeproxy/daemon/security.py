"""Refuse manifests that someone other than root could have written, when running as root.

Whoever can write a file in the manifest directory steers this node's traffic (a Service for
any cluster IP, endpoints anywhere). As root we therefore require the directory tree and every
file in it to be owned by root and not writable by group or other, unless the operator says
``--allow-insecure-manifests``. Symlinks are judged by their targets (the resolved root too).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

MAX_REPORTED = 20


def insecure_paths(root: Path, uid: int = 0, limit: int = 100_000) -> list[str]:
    """One line per problem (path and why); empty when the tree is safe or does not exist."""
    problems: list[str] = []

    def check(path: Path) -> None:
        try:
            st = os.stat(path)
        except OSError:
            return
        if st.st_uid != uid:
            problems.append(f"{path}: owned by uid {st.st_uid}, not {uid}")
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            problems.append(f"{path}: writable by group or other (mode "
                            f"{stat.S_IMODE(st.st_mode):04o})")

    resolved = root.resolve()
    if not resolved.exists():
        return problems
    check(resolved)
    seen = 0
    for dirpath, dirnames, filenames in os.walk(resolved, followlinks=True):
        for name in dirnames + filenames:
            seen += 1
            if seen > limit:
                return problems
            check(Path(dirpath) / name)
    return problems
