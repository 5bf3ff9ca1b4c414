"""The incremental catalog: one parse per changed file, last-good semantics, symlinked roots."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edgeproxy.manifests.catalog import ManifestCatalog


def service(name: str, ip: str, port: int = 80) -> str:
    return (f"apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\n"
            f"spec: {{clusterIP: {ip}, ports: [{{port: {port}}}]}}\n")


def write(path: Path, text: str) -> Path:
    """Write and move mtime forward, so a rewrite within the clock's granularity is seen."""
    path.parent.mkdir(parents=True, exist_ok=True)
    old = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(text)
    st = path.stat()
    if st.st_mtime_ns <= old:
        os.utime(path, ns=(st.st_atime_ns, old + 1_000_000))
    return path


def names(snapshot) -> list[str]:
    return sorted(f"{o.kind}/{o.name}" for o in snapshot.objects)


@pytest.fixture
def parses(monkeypatch) -> list[str]:
    """Records every file the catalog parses."""
    seen: list[str] = []
    from edgeproxy.manifests import loading

    real = loading.parse_bytes

    def counting(data, filename, limits=None):
        seen.append(Path(filename).name)
        return real(data, filename, limits)

    monkeypatch.setattr(loading, "parse_bytes", counting)
    return seen


def test_only_changed_files_are_parsed(tmp_path: Path, parses: list[str]) -> None:
    for i in range(5):
        write(tmp_path / f"s{i}.yaml", service(f"s{i}", f"198.19.0.{i + 1}"))
    catalog = ManifestCatalog(tmp_path)
    first = catalog.refresh()
    assert len(parses) == 5 and len(first.objects) == 5
    parses.clear()
    again = catalog.refresh()
    assert parses == []  # nothing changed: nothing parsed
    assert again.objects == first.objects  # the very same objects
    write(tmp_path / "s3.yaml", service("s3", "198.19.0.33"))
    snap = catalog.refresh()
    assert parses == ["s3.yaml"]
    kept = [o for o in snap.objects if o.name != "s3"]
    assert all(any(o is p for p in first.objects) for o in kept)
    parses.clear()
    write(tmp_path / "s1.yaml", service("s1", "198.19.0.11"))
    catalog.refresh([tmp_path / "s1.yaml"])  # told which path changed: only it is stat'ed
    assert parses == ["s1.yaml"]
    assert catalog.parses_total == 7


def test_added_and_deleted_files(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", service("a", "198.19.0.1"))
    catalog = ManifestCatalog(tmp_path)
    catalog.refresh()
    write(tmp_path / "sub" / "b.yaml", service("b", "198.19.0.2"))
    assert names(catalog.refresh([tmp_path / "sub" / "b.yaml"])) == ["Service/a", "Service/b"]
    (tmp_path / "a.yaml").unlink()
    assert names(catalog.refresh([tmp_path / "a.yaml"])) == ["Service/b"]
    write(tmp_path / "sub" / "c.yaml", service("c", "198.19.0.3"))
    assert names(catalog.refresh([tmp_path / "sub"])) == ["Service/b", "Service/c"]
    (tmp_path / "sub" / "b.yaml").unlink()
    assert names(catalog.refresh()) == ["Service/c"]


def test_without_keep_last_good_a_broken_file_serves_nothing(tmp_path: Path) -> None:
    path = write(tmp_path / "a.yaml", service("a", "198.19.0.1"))
    catalog = ManifestCatalog(tmp_path)
    catalog.refresh()
    write(path, "kind: [unclosed\n")
    snap = catalog.refresh()
    assert snap.objects == () and snap.errors[0].document is None
    assert snap.files[path].rejected and not snap.files[path].served_from_last_good


def test_keep_last_good_whole_file(tmp_path: Path) -> None:
    path = write(tmp_path / "a.yaml", service("a", "198.19.0.1") + "---\n" +
                 service("b", "198.19.0.2"))
    catalog = ManifestCatalog(tmp_path, keep_last_good=True)
    good = catalog.refresh()
    write(path, service("a", "198.19.0.1")[:40])  # half-written: a YAML error
    snap = catalog.refresh()
    assert snap.objects == good.objects
    assert snap.files[path].served_from_last_good and snap.files[path].rejected
    assert "YAML error" in snap.errors[0].message
    write(path, service("c", "198.19.0.3"))  # fixed: the new version replaces the old
    snap = catalog.refresh()
    assert names(snap) == ["Service/c"] and not snap.files[path].served_from_last_good


def test_keep_last_good_per_object(tmp_path: Path) -> None:
    path = write(tmp_path / "a.yaml", service("a", "198.19.0.1") + "---\n" +
                 service("b", "198.19.0.2"))
    catalog = ManifestCatalog(tmp_path, keep_last_good=True)
    catalog.refresh()
    write(path, service("a", "198.19.0.1", port=70000) + "---\n" + service("b", "198.19.0.22"))
    snap = catalog.refresh()
    by_name = {o.name: o for o in snap.objects}
    assert by_name["a"].body["spec"]["ports"][0]["port"] == 80  # previous valid version
    assert by_name["b"].body["spec"]["clusterIP"] == "198.19.0.22"  # new valid version
    assert [e.path for e in snap.errors] == ["spec.ports[0].port"]
    assert snap.files[path].served_from_last_good
    write(path, service("b", "198.19.0.22"))  # "a" removed from the file: it goes away
    assert names(catalog.refresh()) == ["Service/b"]


def test_deleted_file_removes_objects_even_with_keep_last_good(tmp_path: Path) -> None:
    path = write(tmp_path / "a.yaml", service("a", "198.19.0.1"))
    catalog = ManifestCatalog(tmp_path, keep_last_good=True)
    catalog.refresh()
    path.unlink()
    assert catalog.refresh().objects == ()


def test_missing_root(tmp_path: Path) -> None:
    catalog = ManifestCatalog(tmp_path / "nope")
    snap = catalog.refresh()
    assert snap.root_error and "does not exist" in snap.root_error and snap.files == {}


def test_root_symlink_swap(tmp_path: Path) -> None:
    # git-sync: root -> rev1, then root -> rev2 (atomic symlink swap of the whole tree)
    write(tmp_path / "rev1" / "s.yaml", service("one", "198.19.0.1"))
    write(tmp_path / "rev2" / "s.yaml", service("two", "198.19.0.2"))
    root = tmp_path / "root"
    os.symlink("rev1", root)
    catalog = ManifestCatalog(root)
    assert names(catalog.refresh()) == ["Service/one"]
    os.symlink("rev2", tmp_path / "root.tmp")
    os.replace(tmp_path / "root.tmp", root)
    assert names(catalog.refresh()) == ["Service/two"]


def test_configmap_data_swap(tmp_path: Path) -> None:
    write(tmp_path / "..v1" / "s.yaml", service("one", "198.19.0.1"))
    os.symlink("..v1", tmp_path / "..data")
    os.symlink("..data/s.yaml", tmp_path / "s.yaml")
    catalog = ManifestCatalog(tmp_path)
    assert names(catalog.refresh()) == ["Service/one"]
    write(tmp_path / "..v2" / "s.yaml", service("two", "198.19.0.2"))
    os.symlink("..v2", tmp_path / "..data_tmp")
    os.replace(tmp_path / "..data_tmp", tmp_path / "..data")
    # the watcher reports a change inside the hidden directory: known files are re-stat'ed
    assert names(catalog.refresh([tmp_path / "..data"])) == ["Service/two"]


def test_unreadable_and_oversized_files(tmp_path: Path) -> None:
    from edgeproxy.model import LoadLimits

    write(tmp_path / "big.yaml", "a: " + "x" * 5000 + "\n")
    os.symlink(tmp_path / "missing.yaml", tmp_path / "dangling.yaml")
    snap = ManifestCatalog(tmp_path, LoadLimits(max_file_bytes=1000)).refresh()
    messages = {Path(e.file).name: e.message for e in snap.errors}
    assert "over the 1000-byte limit" in messages["big.yaml"]
    assert "cannot read" in messages["dangling.yaml"]


def _age(path: Path, seconds: float) -> None:
    stamp = os.stat(path).st_mtime - seconds
    os.utime(path, (stamp, stamp))


def test_a_failing_fresh_file_is_retried_before_it_replaces_the_last_good(tmp_path: Path) -> None:
    """A file half-written in place: while it is younger than the settle window its failure
    is not believed; the last good version serves and the snapshot asks for a retry."""
    path = tmp_path / "web.yaml"
    write(path, service("web", "198.19.0.1"))
    _age(path, 10)
    catalog = ManifestCatalog(tmp_path, keep_last_good=True, settle=2.0)
    assert names(catalog.refresh()) == ["Service/web"]
    write(path, service("web", "198.19.0.2")[:40])  # the first chunk of a rewrite
    snap = catalog.refresh([path])
    assert names(snap) == ["Service/web"] and snap.errors == ()  # nothing reported yet
    assert snap.retry == (path,)
    write(path, service("web", "198.19.0.2"))  # the writer finished
    snap = catalog.refresh([path])
    assert snap.retry == () and snap.objects[0].body["spec"]["clusterIP"] == "198.19.0.2"


def test_a_failure_that_outlives_the_window_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "web.yaml"
    write(path, "kind: [broken\n")
    catalog = ManifestCatalog(tmp_path, keep_last_good=True, settle=2.0)
    assert catalog.refresh().retry == (path,)
    _age(path, 5)
    snap = catalog.refresh([path])
    assert snap.retry == () and "YAML error" in snap.errors[0].message


def test_a_file_still_open_for_writing_waits_for_its_close(tmp_path: Path) -> None:
    path = tmp_path / "web.yaml"
    write(path, service("web", "198.19.0.1"))  # a valid prefix of what is being written
    catalog = ManifestCatalog(tmp_path, keep_last_good=True, settle=2.0)
    snap = catalog.refresh([path], writing=[path])
    assert names(snap) == [] and snap.retry == (path,)  # not served half-written
    snap = catalog.refresh([path])  # closed: the watcher no longer says "writing"
    assert names(snap) == ["Service/web"]


def test_an_insecure_root_holds_everything_with_one_error(tmp_path: Path) -> None:
    from edgeproxy.manifests.reader import TrustPolicy

    root = tmp_path / "m"
    root.mkdir()
    os.chmod(tmp_path, 0o755)
    write(root / "web.yaml", service("web", "198.19.0.1"))
    os.chmod(root, 0o777)
    policy = TrustPolicy(require_root_owned=True, owner_uid=os.geteuid())
    snap = ManifestCatalog(root, policy=policy).refresh()
    assert snap.objects == () and "is not safe" in snap.root_error
    assert "writable by group or other" in snap.root_error


def test_a_directory_symlink_out_of_the_root_is_not_entered(tmp_path: Path) -> None:
    root = tmp_path / "m"
    root.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    write(elsewhere / "evil.yaml", service("evil", "198.19.0.66"))
    (root / "linked").symlink_to(elsewhere)
    snap = ManifestCatalog(root).refresh()
    assert names(snap) == []
    assert any("outside the manifest root" in e.message for e in snap.errors)
