"""Which files under a manifest directory are manifests.

Owns the file-selection rules only (no parsing): ``*.yaml``, ``*.yml`` and ``*.json``,
recursively; hidden files and directories are skipped, and so are editor and rsync temporaries.
Visible symlinks are followed, which is what makes a ConfigMap volume work: its files are visible
symlinks into the hidden ``..data`` directory, itself a symlink swapped atomically on update.
The walk is bounded in depth and file count and never enters a directory twice (symlink loops),
nor a directory whose real path lies outside the manifest root (and the operator's trusted
roots): such a symlink is reported and not followed (files are checked the same way when read,
edgeproxy/manifests/reader.py).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from edgeproxy.model import LoadLimits

from .reader import TrustContext

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
# rsync writes ``.name.XXXXXX`` (6 random chars) before renaming; it is hidden anyway, but the
# rule is spelled out so that a file named like that is skipped even when given explicitly.
_RSYNC_TEMP = re.compile(r"^\..+\.[A-Za-z0-9]{6}$")


def is_manifest_name(name: str) -> bool:
    """True for a file name edgeproxy reads (the rule applies to the last path component)."""
    if name.startswith("."):  # hidden, emacs lock ``.#x``, rsync ``.x.AbC123``, vim ``.x.swp``
        return False
    if name.endswith("~") or name.endswith(".swp") or _RSYNC_TEMP.match(name):
        return False
    return name.endswith(MANIFEST_SUFFIXES)


@dataclass
class Discovery:
    """Result of one walk: manifest files (sorted) and problems met on the way."""

    files: list[Path] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)  # (path, message)


def discover(root: Path, limits: LoadLimits | None = None,
             context: TrustContext | None = None) -> Discovery:
    """Manifest files under ``root`` (a directory or a single file), sorted by path."""
    limits = limits or LoadLimits()
    result = Discovery()
    try:
        st = os.stat(root)
    except OSError as exc:
        result.problems.append((str(root), f"cannot read: {exc.strerror or exc}"))
        return result
    if not os.path.isdir(root):
        # A file named explicitly is read whatever its name (``edgeproxy validate x.yaml.sed``).
        result.files.append(root)
        return result
    seen_dirs: set[tuple[int, int]] = {(st.st_dev, st.st_ino)}
    stack: list[tuple[Path, int]] = [(root, 0)]
    while stack:
        directory, depth = stack.pop()
        try:
            entries = list(os.scandir(directory))
        except OSError as exc:
            result.problems.append((str(directory), f"cannot list: {exc.strerror or exc}"))
            continue
        for entry in entries:
            name = entry.name
            if name.startswith("."):
                continue
            path = directory / name
            try:
                is_dir = entry.is_dir()  # follows symlinks
            except OSError:
                continue
            if is_dir:
                if depth + 1 > limits.max_depth:
                    result.problems.append((str(path), f"deeper than {limits.max_depth} levels; "
                                                       "not read"))
                    continue
                try:
                    dst = entry.stat()
                except OSError:
                    continue
                key = (dst.st_dev, dst.st_ino)
                if key in seen_dirs:  # symlink loop or a directory linked twice
                    continue
                if context is not None and entry.is_symlink():
                    real = Path(os.path.realpath(path))
                    if context.allowed_base(real) is None:
                        result.problems.append((str(path), f"symlink to {real}, outside the "
                                                           "manifest root: not read"))
                        continue
                seen_dirs.add(key)
                stack.append((path, depth + 1))
            elif is_manifest_name(name):
                if len(result.files) >= limits.max_files:
                    result.problems.append((str(root), f"more than {limits.max_files} manifest "
                                                       "files; the rest are not read"))
                    result.files.sort()
                    return result
                result.files.append(path)
    result.files.sort()
    return result
