"""edgeproxy.demo.daemon: what the demo's `edgeproxy run` subprocess needs around it."""

from __future__ import annotations

import stat
from pathlib import Path

from edgeproxy.demo.daemon import copy_examples

REPO_EXAMPLES = Path(__file__).resolve().parents[2] / "config" / "examples"


def test_copy_examples_gives_modes_the_ownership_check_accepts(tmp_path):
    target = copy_examples(REPO_EXAMPLES, tmp_path / "m")
    copied = sorted(p.name for p in target.iterdir())
    assert copied == sorted(p.name for p in REPO_EXAMPLES.glob("*.yaml"))
    for path in (target, *target.iterdir()):
        assert not stat.S_IMODE(path.stat().st_mode) & (stat.S_IWGRP | stat.S_IWOTH)
