"""File selection: extensions, hidden files, editor/rsync temporaries, symlinks, bounds."""

from __future__ import annotations

import os
from pathlib import Path

from edgeproxy.manifests.discovery import discover, is_manifest_name
from edgeproxy.model import LoadLimits


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{}\n")
    return path


def test_names() -> None:
    for name in ("a.yaml", "b.yml", "c.json"):
        assert is_manifest_name(name)
    for name in ("a.yaml~", "a.yaml.swp", ".a.yaml.swp", ".#a.yaml", ".a.yaml.Xy12Ab",
                 ".hidden.yaml", "a.yaml.sed", "README.md", "x.tsv"):
        assert not is_manifest_name(name), name


def test_recursive_and_skips_hidden_directories(tmp_path: Path) -> None:
    wanted = [_touch(tmp_path / "a.yaml"), _touch(tmp_path / "sub" / "deep" / "b.json")]
    _touch(tmp_path / ".git" / "c.yaml")
    _touch(tmp_path / "sub" / ".cache" / "d.yaml")
    _touch(tmp_path / "sub" / "e.yaml~")
    found = discover(tmp_path)
    assert found.files == sorted(wanted)
    assert found.problems == []


def test_configmap_volume_layout(tmp_path: Path) -> None:
    # kubelet: ..2024_01_01/x.yaml, ..data -> ..2024_01_01, x.yaml -> ..data/x.yaml
    _touch(tmp_path / "..2024_01_01" / "svc.yaml")
    os.symlink("..2024_01_01", tmp_path / "..data")
    os.symlink("..data/svc.yaml", tmp_path / "svc.yaml")
    assert discover(tmp_path).files == [tmp_path / "svc.yaml"]


def test_symlink_loop_terminates(tmp_path: Path) -> None:
    _touch(tmp_path / "a" / "x.yaml")
    os.symlink(tmp_path, tmp_path / "a" / "loop")
    os.symlink(tmp_path / "a", tmp_path / "again")
    files = discover(tmp_path).files
    assert len(files) == 1  # each directory is entered once


def test_depth_and_count_limits(tmp_path: Path) -> None:
    _touch(tmp_path / "1" / "2" / "3" / "deep.yaml")
    _touch(tmp_path / "top.yaml")
    found = discover(tmp_path, LoadLimits(max_depth=2))
    assert found.files == [tmp_path / "top.yaml"]
    assert "deeper than 2" in found.problems[0][1]
    _touch(tmp_path / "top2.yaml")
    found = discover(tmp_path, LoadLimits(max_files=1))
    assert len(found.files) == 1 and "more than 1" in found.problems[0][1]


def test_single_file_and_missing_root(tmp_path: Path) -> None:
    sed = _touch(tmp_path / "coredns.yaml.sed")
    assert discover(sed).files == [sed]  # named explicitly: read whatever its name
    missing = discover(tmp_path / "nope")
    assert missing.files == [] and "cannot read" in missing.problems[0][1]
