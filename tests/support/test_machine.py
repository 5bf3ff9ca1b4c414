"""tests/support/machine.py: a container that fails to boot leaves nothing behind."""

from __future__ import annotations

import shutil

import pytest

from tests.support import machine as machine_module


def test_a_boot_that_fails_removes_its_root_copy_and_cgroups(tmp_path, monkeypatch):
    if shutil.which("systemd-nspawn") is None or not machine_module.cgroup_hierarchies():
        pytest.skip("systemd-nspawn and a cgroup hierarchy are needed")
    empty = tmp_path / "empty-root"  # no init in it: nspawn exits at once
    (empty / "etc").mkdir(parents=True)
    monkeypatch.setattr(machine_module, "base_root", lambda: empty)
    m = machine_module.Machine(tmp_path / "machine")
    m.workdir.mkdir()
    with pytest.raises(RuntimeError, match="systemd-nspawn exited|did not boot"):
        m.boot(timeout=20)
    assert not m.root.exists()
    assert m.proc is not None and m.proc.poll() is not None
    assert not any((h / m.cgroup).exists() for h in machine_module.cgroup_hierarchies())
