"""`edgeproxy demo` command line: registration, defaults and clear errors before any namespace
is created."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgeproxy.cli import build_parser
from edgeproxy.demo import default_manifests


def test_demo_is_registered_with_its_options():
    args = build_parser().parse_args(["demo", "--keep", "--manifests", "/x"])
    assert args.keep is True and args.manifests == "/x"
    assert build_parser().parse_args(["demo"]).manifests is None


def test_default_manifests_are_the_shipped_examples():
    """The package's resources link to config/examples; the same files, not copies."""
    examples = default_manifests()
    checkout = Path(__file__).resolve().parents[2] / "config" / "examples"
    assert examples.resolve() == checkout
    assert (examples / "web.yaml").is_file()


@pytest.mark.skipif(os.geteuid() != 0, reason="the root check comes first")
def test_missing_manifest_directory_is_a_clear_error(tmp_path):
    missing = tmp_path / "nope"
    result = subprocess.run([sys.executable, "-m", "edgeproxy", "demo", "--manifests",
                             str(missing)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert str(missing) in result.stderr and "Traceback" not in result.stderr
