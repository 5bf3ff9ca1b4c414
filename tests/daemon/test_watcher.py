"""The watcher process's events reach the gevent hub; a symlinked root keeps working across
swaps; a watcher that dies is restarted and the daemon told to rescan."""

import os
import signal
from contextlib import contextmanager

import gevent

from edgeproxy.daemon import watcher as watcher_module
from edgeproxy.daemon.watcher import DirectoryWatcher


def _wait(predicate, timeout=5.0):
    for _ in range(int(timeout / 0.02)):
        if predicate():
            return True
        gevent.sleep(0.02)
    return False


@contextmanager
def watching(root):
    """A started watcher on ``root``; yields the list its events are appended to, emptied of
    the rescan every (re)start asks for."""
    seen = []
    watcher = DirectoryWatcher(root, lambda paths, writing=frozenset(): seen.append(paths))
    assert watcher.start(wait=10.0), "watcher process not ready"
    assert seen == [None]  # ready: read everything once
    seen.clear()
    try:
        yield seen, watcher
    finally:
        watcher.stop()


def test_file_event_reaches_hub(tmp_path):
    root = tmp_path / "manifests"
    root.mkdir()
    with watching(root) as (seen, _):
        (root / "web.yaml").write_text("kind: Service\n")
        assert _wait(lambda: any(s and root / "web.yaml" in s for s in seen))


def test_burst_of_files_arrives_in_few_batches(tmp_path):
    root = tmp_path / "manifests"
    root.mkdir()
    with watching(root) as (seen, _):
        for i in range(200):
            (root / f"f{i}.yaml").write_text("x: 1\n")
        want = {root / f"f{i}.yaml" for i in range(200)}
        assert _wait(lambda: want <= set().union(*(s for s in seen if s)))
        assert len(seen) < 50, len(seen)  # batched, not one hand-off per event


def test_symlinked_root_swap_rescans_and_follows_new_target(tmp_path):
    rev1, rev2 = tmp_path / "rev1", tmp_path / "rev2"
    rev1.mkdir()
    rev2.mkdir()
    root = tmp_path / "current"
    root.symlink_to(rev1)
    with watching(root) as (seen, watcher):
        tmp_link = tmp_path / ".tmp-link"
        tmp_link.symlink_to(rev2)
        os.replace(tmp_link, root)  # git-sync's atomic swap
        assert _wait(lambda: None in seen), seen
        assert _wait(lambda: watcher.target == rev2)
        seen.clear()
        (rev2 / "a.yaml").write_text("x: 1\n")  # a change inside the NEW target is seen
        assert _wait(lambda: any(s and root / "a.yaml" in s for s in seen)), seen
        (rev1 / "old.yaml").write_text("x: 1\n")  # the old target is no longer ours
        gevent.sleep(0.3)
        assert not any(s and root / "old.yaml" in s for s in seen), seen


def test_hidden_entry_means_full_rescan(tmp_path):
    root = tmp_path / "cm"
    root.mkdir()
    with watching(root) as (seen, _):
        (root / "..data_tmp").symlink_to(tmp_path)
        os.replace(root / "..data_tmp", root / "..data")  # ConfigMap volume update
        assert _wait(lambda: None in seen), seen


def test_dead_watcher_is_restarted_and_asks_for_a_rescan(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(watcher_module, "RESTART_INITIAL", 0.05)
    root = tmp_path / "manifests"
    root.mkdir()
    with watching(root) as (seen, watcher):
        first = watcher._child.pid
        os.kill(first, signal.SIGKILL)
        assert _wait(lambda: watcher.running and watcher._child.pid != first), "no restart"
        assert None in seen  # the new one's ready: events may have been missed meanwhile
        assert watcher.restarts_total == 1
        assert "manifest watcher exited" in caplog.text
        seen.clear()
        (root / "after.yaml").write_text("x: 1\n")
        assert _wait(lambda: any(s and root / "after.yaml" in s for s in seen)), seen


def test_stop_ends_the_process(tmp_path):
    root = tmp_path / "manifests"
    root.mkdir()
    with watching(root) as (_, watcher):
        pid = watcher._child.pid
    assert watcher._child is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return
    raise AssertionError(f"watcher process {pid} still exists after stop()")


def test_a_file_still_open_for_writing_is_named(tmp_path):
    root = tmp_path / "manifests"
    root.mkdir()
    calls = []
    watcher = DirectoryWatcher(root, lambda paths, writing=frozenset(): calls.append(
        (paths, writing)))
    assert watcher.start(wait=10.0)
    try:
        calls.clear()
        handle = open(root / "slow.yaml", "w")
        handle.write("kind: Service\n")
        handle.flush()
        assert _wait(lambda: any(p and root / "slow.yaml" in w for p, w in calls)), calls
        calls.clear()
        handle.write("more: 1\n")
        handle.close()  # IN_CLOSE_WRITE: the writer is done
        assert _wait(lambda: any(p and root / "slow.yaml" in p and not w for p, w in calls)), \
            calls
    finally:
        watcher.stop()


def test_an_exception_in_the_callback_does_not_end_watching(tmp_path):
    root = tmp_path / "manifests"
    root.mkdir()
    seen = []

    def flaky(paths, writing=frozenset()):
        seen.append(paths)
        if paths and root / "boom.yaml" in paths:
            raise RuntimeError("boom")

    watcher = DirectoryWatcher(root, flaky)
    assert watcher.start(wait=10.0)
    try:
        (root / "boom.yaml").write_text("x: 1\n")
        assert _wait(lambda: any(s and root / "boom.yaml" in s for s in seen))
        (root / "after.yaml").write_text("x: 1\n")
        assert _wait(lambda: any(s and root / "after.yaml" in s for s in seen))
        assert watcher.restarts_total == 0
    finally:
        watcher.stop()
