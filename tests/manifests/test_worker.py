"""The parse worker process: the same results as loading in-process, and budgets that cost the
worker, never the caller: memory, time, and memory given back."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from edgeproxy.manifests.catalog import ManifestCatalog, load_in_process
from edgeproxy.manifests.loading import LoadResult, file_error
from edgeproxy.manifests.reader import TrustPolicy
from edgeproxy.manifests.worker import ParseWorker
from edgeproxy.model import LoadLimits

SERVICE = """\
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default}}
spec:
  clusterIP: {ip}
  ports: [{{port: 80, targetPort: 8080}}]
"""


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture
def worker():
    w = ParseWorker()
    yield w
    w.close()


def summary(results):
    return {p.name: ([(o.kind, o.name) for o in r.objects], [str(e) for e in r.errors],
                     r.rejected) for p, r in results.items()}


def test_results_equal_the_in_process_ones(tmp_path, worker):
    paths = [write(tmp_path / f"s{i}.yaml", SERVICE.format(name=f"s{i}", ip=f"198.19.0.{i + 1}"))
             for i in range(5)]
    paths.append(write(tmp_path / "bad.yaml", "kind: [oops\n"))
    paths.append(write(tmp_path / "cm.yaml", "apiVersion: v1\nkind: ConfigMap\n"
                                             "metadata: {name: c}\ndata: {a: b}\n"))
    limits, policy = LoadLimits(), TrustPolicy()
    here = load_in_process(paths, tmp_path, policy, limits)
    there = worker.load(paths, tmp_path, policy, limits)
    assert summary(there) == summary(here)
    assert there[paths[-1]].objects[0].body == {}  # ignored kinds travel without their body


def test_a_file_over_the_memory_budget_costs_the_worker_only(tmp_path):
    # 64 MiB of address space is far too little for a big document: the child fails, the
    # file is refused with a clear message, the next file loads in a fresh child.
    worker = ParseWorker(memory_limit=160 << 20)
    try:
        big = write(tmp_path / "big.yaml", "apiVersion: v1\nkind: List\nitems:\n" +
                    "".join(f"- {{kind: ConfigMap, apiVersion: v1, metadata: {{name: c{i}}}, "
                            f"data: {{k: {'v' * 200}}}}}\n" for i in range(300_000)))
        fine = write(tmp_path / "ok.yaml", SERVICE.format(name="ok", ip="198.19.0.9"))
        results = worker.load([big, fine], tmp_path, TrustPolicy(),
                              LoadLimits(max_document_nodes=10**8, max_file_nodes=10**8))
        assert results[big].rejected
        assert "memory" in str(results[big].errors[0])
        assert [o.name for o in results[fine].objects] == ["ok"]
    finally:
        worker.close()


# A child that, like the real one after a MemoryError, answers for every file it was given
# and then exits with 3 instead of saying "done".
_ANSWER_THEN_EXIT = r"""
import pickle, sys
from edgeproxy.manifests.loading import LoadResult, file_error
from edgeproxy.manifests.worker import _HEADER
size, = _HEADER.unpack(sys.stdin.buffer.read(_HEADER.size))
paths = pickle.loads(sys.stdin.buffer.read(size))[0]
for path in paths:
    data = pickle.dumps(("file", path, LoadResult(None, (), (file_error(path, "over the memory "
                         "budget"),), rejected=True)))
    sys.stdout.buffer.write(_HEADER.pack(len(data)) + data)
sys.stdout.buffer.flush()
sys.exit(3)
"""


@pytest.mark.parametrize("count", [1, 2])
def test_a_child_that_answers_everything_then_dies_leaves_nothing_owed(tmp_path, count):
    """After a MemoryError the child answers for its file and exits: when that file was the
    last one, nothing is owed, and the parent must not look for a culprit (it raised
    IndexError out of every sync while the file stayed)."""
    worker = ParseWorker(command=[sys.executable, "-c", _ANSWER_THEN_EXIT])
    try:
        paths = [write(tmp_path / f"f{i}.yaml", "kind: Service\n") for i in range(count)]
        results = worker.load(paths, tmp_path, TrustPolicy(), LoadLimits())
        assert set(results) == set(paths)
        assert all("memory" in str(r.errors[0]) for r in results.values())
        assert worker.pid is None  # the dead child was let go; the next load starts one
    finally:
        worker.close()


def test_a_refused_file_is_read_again_only_when_it_changes(tmp_path):
    """A file the worker refused unread (its result has no stat key) is not parsed again on
    every rescan: the catalog keeps the key it saw."""
    calls = []

    def loader(paths, root, policy, limits):
        calls.extend(paths)
        return {p: LoadResult(None, (), (file_error(p, "timed out"),), rejected=True)
                for p in paths}

    write(tmp_path / "slow.yaml", "kind: Service\n")
    catalog = ManifestCatalog(tmp_path, loader=loader)
    catalog.refresh()
    catalog.refresh()
    assert len(calls) == 1
    write(tmp_path / "slow.yaml", "kind: Service\n# changed\n")
    catalog.refresh()
    assert len(calls) == 2


def test_a_file_over_the_time_budget_is_refused_and_the_rest_loads(tmp_path):
    worker = ParseWorker(file_timeout=0.2)
    try:
        slow = write(tmp_path / "slow.yaml", "".join(
            SERVICE.format(name=f"s{i}", ip=f"198.19.{i // 250}.{i % 250 + 1}") + "---\n"
            for i in range(20_000)))
        fine = write(tmp_path / "ok.yaml", SERVICE.format(name="ok", ip="198.19.200.9"))
        started = time.monotonic()
        results = worker.load([slow, fine], tmp_path, TrustPolicy(), LoadLimits())
        assert time.monotonic() - started < 5
        assert results[slow].rejected and "timed out" in str(results[slow].errors[0])
        assert [o.name for o in results[fine].objects] == ["ok"]
        assert worker.kills_total == 1
    finally:
        worker.close()


def test_a_grown_worker_is_replaced_to_give_memory_back(tmp_path):
    worker = ParseWorker(recycle_rss=1)  # every batch grows it past 1 byte
    try:
        path = write(tmp_path / "a.yaml", SERVICE.format(name="a", ip="198.19.0.1"))
        worker.load([path], tmp_path, TrustPolicy(), LoadLimits())
        first = worker.starts_total
        worker.load([path], tmp_path, TrustPolicy(), LoadLimits())
        assert worker.recycles_total == 2 and worker.starts_total == first + 1
        assert worker.kills_total == 0
    finally:
        worker.close()


def test_close_does_not_wait_for_a_stuck_child(tmp_path):
    # A child that never answers (a read hung on a dead network filesystem) is killed.
    worker = ParseWorker(command=[sys.executable, "-c", "import time; time.sleep(60)"],
                         file_timeout=0.3)
    path = write(tmp_path / "a.yaml", "x: 1\n")
    results = worker.load([path], tmp_path, TrustPolicy(), LoadLimits())
    assert "timed out" in str(results[path].errors[0])
    started = time.monotonic()
    worker.close()
    assert time.monotonic() - started < 1


def test_the_catalog_uses_the_worker(tmp_path, worker):
    write(tmp_path / "a.yaml", SERVICE.format(name="a", ip="198.19.0.1"))
    catalog = ManifestCatalog(tmp_path, loader=worker.load)
    assert [o.name for o in catalog.refresh().objects] == ["a"]
    assert worker.starts_total == 1 and os.path.exists(f"/proc/{worker.pid}")
