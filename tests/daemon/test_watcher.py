"""watchdog events reach the gevent hub; a symlinked root keeps working across swaps."""

import os
from pathlib import Path

import gevent

from edgeproxy.daemon.watcher import DirectoryWatcher


def _wait(predicate, timeout=3.0):
    for _ in range(int(timeout / 0.02)):
        if predicate():
            return True
        gevent.sleep(0.02)
    return False


def test_file_event_reaches_hub(tmp_path):
    root = tmp_path / "manifests"
    root.mkdir()
    seen = []
    watcher = DirectoryWatcher(root, seen.append)
    watcher.start()
    try:
        gevent.sleep(0.1)
        (root / "web.yaml").write_text("kind: Service\n")
        assert _wait(lambda: any(s and root / "web.yaml" in s for s in seen))
    finally:
        watcher.stop()


def test_symlinked_root_swap_rescans_and_follows_new_target(tmp_path):
    rev1, rev2 = tmp_path / "rev1", tmp_path / "rev2"
    rev1.mkdir()
    rev2.mkdir()
    root = tmp_path / "current"
    root.symlink_to(rev1)
    seen = []
    watcher = DirectoryWatcher(root, seen.append)
    watcher.start()
    try:
        gevent.sleep(0.1)
        tmp_link = tmp_path / ".tmp-link"
        tmp_link.symlink_to(rev2)
        os.replace(tmp_link, root)  # git-sync's atomic swap
        assert _wait(lambda: None in seen), seen
        seen.clear()
        (rev2 / "a.yaml").write_text("x: 1\n")  # a change inside the NEW target is seen
        assert _wait(lambda: any(s and root / "a.yaml" in s for s in seen)), seen
    finally:
        watcher.stop()


def test_hidden_entry_means_full_rescan(tmp_path):
    root = tmp_path / "cm"
    root.mkdir()
    seen = []
    watcher = DirectoryWatcher(root, seen.append)
    watcher.start()
    try:
        gevent.sleep(0.1)
        (root / "..data_tmp").symlink_to(tmp_path)
        os.replace(root / "..data_tmp", root / "..data")  # ConfigMap volume update
        assert _wait(lambda: None in seen), seen
    finally:
        watcher.stop()
