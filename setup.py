"""Build hook: records the commit a wheel is built from (``edgeproxy --version`` prints it).

Everything else about the package is declared in pyproject.toml. The commit comes from
``EDGEPROXY_BUILD_COMMIT`` when set (a build from an exported tree), else from git in this
directory (edgeproxy/buildinfo.py's `git_commit`, the same function an editable checkout uses
at run time).
"""

import os
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


def source_commit() -> str:
    explicit = os.environ.get("EDGEPROXY_BUILD_COMMIT")
    if explicit:
        return explicit
    sys.path.insert(0, str(HERE))
    try:
        from edgeproxy.buildinfo import git_commit
    finally:
        sys.path.remove(str(HERE))
    return git_commit(HERE) or "unknown"


class BuildPyWithCommit(build_py):
    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return
        target = Path(self.build_lib) / "edgeproxy" / "_build_commit.py"
        target.write_text('"""Written by setup.py when this wheel was built."""\n\n'
                          f"COMMIT = {source_commit()!r}\n", encoding="utf-8")


setup(cmdclass={"build_py": BuildPyWithCommit})
