"""What may be read from a manifest directory, and how: containment, regular files only,
never blocking, ownership on every read."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import pytest

from edgeproxy.manifests.reader import ReadRefused, TrustContext, TrustPolicy, read_manifest

LIMIT = 1 << 20
SECURE = TrustPolicy(require_root_owned=True, owner_uid=os.geteuid())


def tree(tmp_path: Path) -> Path:
    """A root-like tree: the parent and root 0755, owned by us (the test's uid)."""
    base = tmp_path / "base"
    base.mkdir(mode=0o755)
    os.chmod(tmp_path, 0o755)
    root = base / "manifests"
    root.mkdir(mode=0o755)
    return root


def write(path: Path, text: str = "kind: Service\n", mode: int = 0o644) -> Path:
    path.write_text(text)
    os.chmod(path, mode)
    return path


def read(path: Path, root: Path, policy: TrustPolicy = TrustPolicy()) -> bytes:
    return read_manifest(path, TrustContext(root, policy), LIMIT)[0]


def test_a_regular_file_is_read(tmp_path):
    root = tree(tmp_path)
    assert read(write(root / "a.yaml"), root, SECURE) == b"kind: Service\n"


def test_a_fifo_is_refused_at_once_without_blocking(tmp_path):
    root = tree(tmp_path)
    fifo = root / "x.yaml"
    os.mkfifo(fifo)
    done = []

    def attempt():
        try:
            read(fifo, root)
        except ReadRefused as exc:
            done.append(str(exc))

    thread = threading.Thread(target=attempt, daemon=True)
    started = time.monotonic()
    thread.start()
    thread.join(2.0)
    assert not thread.is_alive(), "reading a FIFO blocked"
    assert time.monotonic() - started < 1.0
    assert done and "FIFO" in done[0]


def test_a_socket_and_a_directory_are_refused(tmp_path):
    root = tree(tmp_path)
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(root / "s.yaml"))
    try:
        with pytest.raises(ReadRefused, match="not a regular file|socket|cannot open"):
            read(root / "s.yaml", root)
    finally:
        sock.close()
    (root / "d.yaml").mkdir()
    with pytest.raises(ReadRefused, match="directory|cannot open"):
        read(root / "d.yaml", root)


def test_symlinks_inside_the_root_are_followed_outside_refused(tmp_path):
    root = tree(tmp_path)
    data = root / "..2024_01_01"
    data.mkdir()
    write(data / "web.yaml")
    (root / "..data").symlink_to(data.name)
    (root / "web.yaml").symlink_to("..data/web.yaml")  # a ConfigMap volume's layout
    assert read(root / "web.yaml", root, SECURE) == b"kind: Service\n"
    outside = write(tmp_path / "secret.yaml", "password: x\n")
    (root / "shadow.yaml").symlink_to(outside)
    with pytest.raises(ReadRefused, match="outside the manifest root"):
        read(root / "shadow.yaml", root)
    # ... unless the operator trusts that directory.
    trusted = TrustPolicy(trusted_roots=(tmp_path,))
    assert read(root / "shadow.yaml", root, trusted) == b"password: x\n"



def test_a_sticky_directory_passed_as_an_ancestor_is_still_judged_inside_a_trusted_root(tmp_path):
    """One directory, two verdicts: above the manifest root a sticky world-writable directory
    is accepted (like /tmp); inside a trusted root, where a symlink leads, it is not. The
    refresh's verdict cache must not let the first stand for the second."""
    root = tree(tmp_path)
    trusted_root = root.parent
    sticky = trusted_root / "drop"
    sticky.mkdir()
    os.chmod(sticky, 0o1777)
    manifests = sticky / "manifests"
    manifests.mkdir(mode=0o755)
    write(manifests / "a.yaml")
    target = write(sticky / "other.yaml")
    (manifests / "other.yaml").symlink_to(target)
    policy = TrustPolicy(require_root_owned=True, owner_uid=os.geteuid(),
                         trusted_roots=(trusted_root,))
    context = TrustContext(manifests, policy)
    assert read_manifest(manifests / "a.yaml", context, LIMIT)[0] == b"kind: Service\n"
    with pytest.raises(ReadRefused, match="drop is writable"):
        read_manifest(manifests / "other.yaml", context, LIMIT)

def test_a_symlinked_root_is_judged_by_its_target(tmp_path):
    base = tree(tmp_path).parent
    rev = base / "rev-1"
    rev.mkdir(mode=0o755)
    write(rev / "a.yaml")
    link = base / "current"
    link.symlink_to(rev.name)  # git-sync
    assert read(link / "a.yaml", link, SECURE) == b"kind: Service\n"


@pytest.mark.parametrize("mode", [0o664, 0o646])
def test_a_file_others_can_write_is_refused(tmp_path, mode):
    root = tree(tmp_path)
    path = write(root / "a.yaml", mode=mode)
    with pytest.raises(ReadRefused, match="writable by group or other"):
        read(path, root, SECURE)
    assert read(path, root)  # without the ownership rule (--allow-insecure-manifests)


def test_a_file_of_another_owner_is_refused(tmp_path):
    root = tree(tmp_path)
    path = write(root / "a.yaml")
    policy = TrustPolicy(require_root_owned=True, owner_uid=os.geteuid() + 1)
    with pytest.raises(ReadRefused, match="owned by uid"):
        read(path, root, policy)


def test_an_insecure_directory_in_the_tree_is_refused(tmp_path):
    root = tree(tmp_path)
    sub = root / "team"
    sub.mkdir()
    os.chmod(sub, 0o777)
    path = write(sub / "a.yaml")
    with pytest.raises(ReadRefused, match="directory .*team is writable"):
        read(path, root, SECURE)


def test_root_ancestors_world_writable_only_with_the_sticky_bit(tmp_path):
    root = tree(tmp_path)
    os.chmod(root.parent, 0o777)
    context = TrustContext(root, SECURE)
    assert any("base is writable" in p for p in context.root_problems(root))
    os.chmod(root.parent, 0o1777)  # like /tmp: others cannot rename our directory away
    assert TrustContext(root, SECURE).root_problems(root) == []
    os.chmod(root.parent, 0o755)



def test_a_root_that_is_one_file_judges_its_directories_as_ancestors(tmp_path):
    """`edgeproxy validate FILE`: the file is the root, so every directory above it is an
    ancestor, where a sticky world-writable one (a checkout under /tmp) is accepted, and a
    plain world-writable one is not."""
    root = tree(tmp_path)
    path = write(root / "one.yaml")
    os.chmod(root.parent, 0o1777)
    try:
        assert read(path, path, SECURE) == b"kind: Service\n"
        os.chmod(root.parent, 0o777)
        with pytest.raises(ReadRefused, match="base is writable"):
            read(path, path, SECURE)
    finally:
        os.chmod(root.parent, 0o755)

def test_a_file_changing_while_read_asks_for_a_retry(tmp_path, monkeypatch):
    root = tree(tmp_path)
    path = write(root / "a.yaml", "a: 1\n" * 1000)
    real_read = os.read
    appended = []

    def growing(fd, size):
        chunk = real_read(fd, size)
        if chunk and not appended:  # a writer appends while we read
            appended.append(True)
            with open(path, "a") as handle:
                handle.write("b: 2\n")
        return chunk

    monkeypatch.setattr(os, "read", growing)
    with pytest.raises(ReadRefused) as info:
        read(path, root)
    assert info.value.retry


def test_the_size_cap_is_checked_before_reading(tmp_path):
    root = tree(tmp_path)
    path = write(root / "big.yaml", "x" * 2000)
    with pytest.raises(ReadRefused, match="over the 1000-byte limit"):
        read_manifest(path, TrustContext(root, TrustPolicy()), 1000)


def test_a_root_that_is_not_there_yet_is_no_problem(tmp_path):
    """A ConfigMap mount or git-sync's first clone appears after boot: the missing root is
    the catalog's root error (held by the guard), not an ownership problem at start."""
    root = tree(tmp_path) / "later"
    assert TrustContext(root, SECURE).root_problems(root) == []
