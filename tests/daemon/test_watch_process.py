"""The watcher process's pure decision: which watchdog paths mean what."""

from pathlib import Path

from edgeproxy.daemon.watch_process import classify

ROOT = Path("/srv/current")
TARGET = Path("/srv/rev-2")


def test_changed_files_are_mapped_back_under_the_configured_root():
    reason, changed = classify(["/srv/rev-2/a.yaml", "/srv/rev-2/sub/b.yaml"], ROOT, TARGET)
    assert reason is None
    assert changed == {ROOT / "a.yaml", ROOT / "sub" / "b.yaml"}


def test_plain_root_paths_stay_as_they_are():
    root = Path("/etc/edgeproxy")
    assert classify(["/etc/edgeproxy/a.yaml"], root, root) == (None, {root / "a.yaml"})


def test_root_link_replaced_means_rescan():
    reason, _ = classify(["/srv/current"], ROOT, TARGET)
    assert reason == "root replaced"


def test_hidden_entries_and_directory_events_mean_rescan():
    assert classify(["/srv/rev-2/..data"], ROOT, TARGET)[0] == "hidden entry changed"
    assert classify(["/srv/rev-2/..2024_01/x.yaml"], ROOT, TARGET)[0] == "hidden entry changed"
    assert classify(["/srv/rev-2/new-dir", ""], ROOT, TARGET)[0] == "directory changed"


def test_siblings_of_the_root_are_not_ours():
    assert classify(["/srv/other.yaml", "/srv/rev-1"], ROOT, TARGET) == (None, set())


def test_a_writers_hidden_temporary_is_ignored_and_its_rename_is_a_change():
    """rsync and kubectl-style mirrors write .name.XXXXXX then rename: no full rescan."""
    reason, changed = classify(["/srv/rev-2/.web.yaml.Ab12Cd"], ROOT, TARGET)
    assert (reason, changed) == (None, set())
    reason, changed = classify(["/srv/rev-2/.web.yaml.Ab12Cd", "/srv/rev-2/web.yaml"], ROOT,
                               TARGET)
    assert (reason, changed) == (None, {ROOT / "web.yaml"})


def test_while_the_root_is_missing_its_siblings_are_still_not_ours():
    assert classify(["/srv/other.yaml"], ROOT, None) == (None, set())
