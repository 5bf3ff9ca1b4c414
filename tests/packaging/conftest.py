"""The bundle build, shared by the packaging tests: built once per (arch, Python) a session."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

from tests.packaging.test_bundle import build_bundle


@pytest.fixture(scope="session")
def built_bundle(tmp_path_factory) -> Callable[[str, str], Path]:
    """built_bundle(arch, python) -> the archive of `scripts/build-bundle` for that target,
    built on first use (the archive is reproducible; nothing changes it in place)."""
    built: dict[tuple[str, str], Path] = {}

    def get(arch: str, python: str) -> Path:
        if (arch, python) not in built:
            built[arch, python] = build_bundle(arch, python, tmp_path_factory.mktemp("dist"))
        return built[arch, python]

    return get
