import os


from edgeproxy.daemon.security import insecure_paths


def test_safe_tree(tmp_path):
    (tmp_path / "a.yaml").write_text("x")
    os.chmod(tmp_path, 0o755)
    os.chmod(tmp_path / "a.yaml", 0o644)
    assert insecure_paths(tmp_path, uid=os.getuid()) == []


def test_group_writable_file_and_foreign_owner(tmp_path):
    f = tmp_path / "a.yaml"
    f.write_text("x")
    os.chmod(tmp_path, 0o755)
    os.chmod(f, 0o664)
    problems = insecure_paths(tmp_path, uid=os.getuid())
    assert len(problems) == 1 and "a.yaml" in problems[0] and "0664" in problems[0]
    assert any("owned by uid" in p for p in insecure_paths(tmp_path, uid=os.getuid() + 1))


def test_symlinked_root_judged_by_target(tmp_path):
    target = tmp_path / "rev1"
    target.mkdir()
    os.chmod(target, 0o777)
    link = tmp_path / "current"
    link.symlink_to(target)
    assert any("rev1" in p for p in insecure_paths(link, uid=os.getuid()))
