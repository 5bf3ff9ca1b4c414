"""Shared fixtures: paths to the real-world corpus and private network namespaces."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from tests.support.netns import NetNS, netns_available

REPO_ROOT = Path(__file__).resolve().parents[1]
# A byte-for-byte copy of the project's shared real-world corpus (SOURCES.md there names each
# file's origin and licence), kept in the tree so that a clean clone tests against it too.
CORPUS_DIR = REPO_ROOT / "tests" / "data" / "corpus"
# The copy it was taken from, where a checkout sits beside it: tests/test_corpus_copy.py
# says when the two differ.
SHARED_CORPUS_DIR = REPO_ROOT.parent / "shared" / "corpus" / "real"


@pytest.fixture
def corpus_dir() -> Path:
    return CORPUS_DIR


@pytest.fixture
def netns() -> Iterator[NetNS]:
    """A fresh network namespace (loopback up), deleted after the test."""
    reason = netns_available()
    if reason:
        pytest.skip(reason)
    with NetNS() as ns:
        yield ns


@pytest.fixture
def netns_factory() -> Iterator:
    """Create as many namespaces as a test needs; all are deleted afterwards."""
    reason = netns_available()
    if reason:
        pytest.skip(reason)
    created: list[NetNS] = []

    def make(prefix: str = "ep") -> NetNS:
        ns = NetNS(prefix).create()
        created.append(ns)
        return ns

    yield make
    for ns in reversed(created):
        ns.delete()
