"""The corpus in tests/data/corpus is the shared one, unchanged: neither side was edited alone."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.conftest import CORPUS_DIR, SHARED_CORPUS_DIR


def _digests(root: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.iterdir()) if p.is_file()}


def test_the_copy_has_its_sources_and_verdicts():
    names = set(_digests(CORPUS_DIR))
    assert {"SOURCES.md", "EXPECTED.tsv", "NOTES.md"} <= names
    assert len(names) == 70


@pytest.mark.skipif(not SHARED_CORPUS_DIR.is_dir(), reason=f"no shared corpus at {SHARED_CORPUS_DIR}")
def test_the_copy_matches_the_shared_corpus():
    ours, shared = _digests(CORPUS_DIR), _digests(SHARED_CORPUS_DIR)
    assert sorted(ours.keys() ^ shared.keys()) == []
    assert [name for name in ours if ours[name] != shared[name]] == []
