"""What this installation is: the version and the commit it was built from.

A wheel carries ``edgeproxy/_build_commit.py``, written by setup.py at build time from
`git_commit` below. An editable checkout has none; there the commit is read from the
checkout's git at run time, since that tree is the code that runs.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from edgeproxy import __version__


def git_commit(tree: Path) -> str | None:
    """HEAD of the git checkout at ``tree``, ``-dirty`` when tracked files changed; None when
    ``tree`` is no checkout or git is missing."""
    if not (tree / ".git").exists():
        return None
    try:
        commit = subprocess.run(["git", "-C", str(tree), "rev-parse", "HEAD"], check=True,
                                capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(tree), "status", "--porcelain",
                                "--untracked-files=no"], check=True, capture_output=True,
                               text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if dirty else "")


def build_commit() -> str:
    try:
        from edgeproxy._build_commit import COMMIT  # type: ignore[import-not-found]
    except ImportError:
        commit = git_commit(Path(__file__).resolve().parent.parent)
        return f"{commit}, editable checkout" if commit else "unknown"
    return str(COMMIT)


def version_line() -> str:
    return f"edgeproxy {__version__} (commit {build_commit()})"
