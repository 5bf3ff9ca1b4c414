"""What users install: the wheel and the offline bundle, exercised outside the checkout.

scripts/build-bundle builds the bundle once per module (the locked wheels come from PyPI or
pip's cache, the only step here that uses the network). Everything after that runs with the
network switched off (``unshare -n``), from a working directory outside the checkout, in a
venv that has never seen the source tree: ``--version`` names the commit, ``validate`` takes
the shipped examples and refuses a broken file without a traceback, ``demo`` walks every step.
install.sh and uninstall.sh run with ``--root`` into a scratch tree, inside a network namespace
of the test's own (uninstall runs ``edgeproxy cleanup`` there).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name, parse_wheel_filename

REPO = Path(__file__).resolve().parents[2]
HOST_ARCH = platform.machine()
HERE_PYTHON = "%d.%d" % sys.version_info[:2]
SUPPORTED_PYTHONS = ("3.11", "3.12", "3.13")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def _clean_env(**extra: str) -> dict[str, str]:
    """The environment of a user's shell: no PYTHONPATH into the checkout, no pip config."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTHON", "PIP_", "VIRTUAL_ENV"))}
    env["PIP_CONFIG_FILE"] = os.devnull
    env.update(extra)
    return env


def build_bundle(arch: str, python: str, out: Path, **env: str) -> Path:
    # --allow-dirty: the suite also runs on a checkout with uncommitted work (CI's clone is
    # clean, and the bundle is then exactly HEAD).
    result = subprocess.run([str(REPO / "scripts" / "build-bundle"), "--arch", arch,
                             "--python", python, "--out", str(out), "--allow-dirty"],
                            capture_output=True, text=True, timeout=600,
                            env={**os.environ, **env})
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    archive = Path(result.stdout.strip().splitlines()[-1])
    assert archive.name == f"edgeproxy-0.1.0-linux-{arch}-cp{python.replace('.', '')}.tar.gz"
    return archive


def unpack(archive: Path, into: Path) -> Path:
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    (top,) = into.iterdir()
    return top


def find_python(version: str) -> str | None:
    if version == HERE_PYTHON:
        return sys.executable
    candidates = [shutil.which(f"python{version}") or "", f"/usr/bin/python{version}",
                  *sorted(str(p) for p in Path.home().glob(f".pyenv/versions/{version}.*/bin/"
                                                           f"python{version}"))]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            probe = subprocess.run([candidate, "-c", "import sys; print('%d.%d' % "
                                    "sys.version_info[:2])"], capture_output=True, text=True)
            if probe.stdout.strip() == version:
                return candidate
    return None


def offline(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    """Run with no network at all (a private, empty network namespace)."""
    if os.geteuid() != 0:
        pytest.skip("needs root for unshare -n")
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    kwargs.setdefault("timeout", 180)
    return subprocess.run(["unshare", "-n", *argv], **kwargs)


def install_wheelhouse(bundle: Path, python: str, venv: Path, cwd: Path) -> Path:
    """A fresh venv filled from the bundle's wheelhouse only, as install.sh does it."""
    subprocess.run([python, "-m", "venv", "--without-pip", str(venv)], check=True)
    (pip_wheel,) = (bundle / "wheels").glob("pip-*.whl")
    result = offline([str(venv / "bin" / "python"), str(pip_wheel / "pip"), "--isolated",
                      "install", "-q", "--no-index", "--no-cache-dir", "--find-links",
                      str(bundle / "wheels"), "--require-hashes", "--only-binary=:all:",
                      "-r", str(bundle / "requirements.txt")], cwd=cwd, env=_clean_env())
    assert result.returncode == 0, result.stdout + result.stderr
    return venv / "bin" / "edgeproxy"


def head_commit() -> str:
    return subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, built_bundle) -> Path:
    return unpack(built_bundle(HOST_ARCH, HERE_PYTHON), tmp_path_factory.mktemp("bundle"))


def test_bundle_contents_and_metadata(bundle):
    names = {p.name for p in bundle.iterdir()}
    assert {"wheels", "requirements.txt", "runtime.txt", "BUNDLE.json", "edgeproxy.service",
            "edgeproxy.yaml", "install.sh", "uninstall.sh", "docs"} <= names
    meta = json.loads((bundle / "BUNDLE.json").read_text())
    assert (meta["arch"], meta["python"]) == (HOST_ARCH, HERE_PYTHON)
    assert meta["commit"].startswith(head_commit())
    for relative, digest in meta["files"].items():
        import hashlib

        assert hashlib.sha256((bundle / relative).read_bytes()).hexdigest() == digest, relative
    wheels = {parse_wheel_filename(w.name)[0] for w in (bundle / "wheels").glob("*.whl")}
    assert "edgeproxy" in wheels and "gevent" in wheels and "pip" in wheels
    assert "python-iptables" not in wheels  # nothing on a node compiles C
    # The wheel holds the tracked modules and nothing else (no stale build/ leftovers).
    import zipfile

    (own,) = (bundle / "wheels").glob("edgeproxy-*.whl")
    shipped = {n for n in zipfile.ZipFile(own).namelist()
               if n.startswith("edgeproxy/") and n.endswith(".py")} - {"edgeproxy/_build_commit.py"}
    tracked = set(subprocess.run(["git", "-C", str(REPO), "ls-files", "edgeproxy/*.py",
                                  "edgeproxy/**/*.py"], capture_output=True, text=True,
                                 check=True).stdout.split())
    assert shipped == tracked, (shipped ^ tracked)
    assert (bundle / "edgeproxy.service").read_text() == (REPO / "edgeproxy.service").read_text()


def test_wheel_installed_offline_runs_outside_the_checkout(bundle, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    edgeproxy = install_wheelhouse(bundle, sys.executable, tmp_path / "venv", elsewhere)
    env = _clean_env()

    version = offline([str(edgeproxy), "--version"], cwd=elsewhere, env=env)
    assert version.returncode == 0 and head_commit() in version.stdout, version
    assert "editable" not in version.stdout

    shipped = offline([str(tmp_path / "venv" / "bin" / "python"), "-c",
                       "from edgeproxy.resources import example_manifests as e; print(e())"],
                      cwd=elsewhere, env=env).stdout.strip()
    assert shipped.startswith(str(tmp_path / "venv")), shipped  # the wheel's, not the tree's
    valid = offline([str(edgeproxy), "validate", shipped], cwd=elsewhere, env=env)
    assert valid.returncode == 0, valid.stdout + valid.stderr
    assert "proxy  default/web" in valid.stdout

    broken = elsewhere / "broken"
    broken.mkdir()
    (broken / "svc.yaml").write_text("apiVersion: v1\nkind: Service\nmetadata:\n  name: x\n"
                                     "spec:\n  clusterIP: 198.19.9.9\n  ports:\n"
                                     "    - port: not-a-number\n")
    refused = offline([str(edgeproxy), "validate", str(broken)], cwd=elsewhere, env=env)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "svc.yaml" in refused.stdout + refused.stderr
    assert "Traceback" not in refused.stdout + refused.stderr

    demo = offline([str(edgeproxy), "demo"], cwd=elsewhere, env=env, timeout=240)
    assert demo.returncode == 0, demo.stdout[-4000:] + demo.stderr[-4000:]
    assert "FAILED" not in demo.stdout


def _tree(root: Path) -> dict[str, str]:
    """Every path under root with its kind and mode (and link target)."""
    seen = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        if path.is_symlink():
            seen[str(path.relative_to(root))] = "-> " + os.readlink(path)
        else:
            seen[str(path.relative_to(root))] = oct(st.st_mode)
    return seen


def test_install_upgrade_uninstall_with_root(bundle, netns, tmp_path, tmp_path_factory):
    root = tmp_path / "node"
    python = sys.executable

    def install(b: Path) -> str:
        result = netns.run(["unshare", "-n", str(b / "install.sh"), "--root", str(root),
                            "--python", python], check=False, env=_clean_env())
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    first = install(bundle)
    assert "created" in first and "systemd was not asked" in first
    opt = root / "opt" / "edgeproxy"
    assert os.readlink(root / "usr/local/bin/edgeproxy") == "/opt/edgeproxy/current/bin/edgeproxy"
    assert (root / "etc/systemd/system/edgeproxy.service").read_text() == \
        (REPO / "edgeproxy.service").read_text()
    manifests = root / "etc" / "edgeproxy"
    assert manifests.is_dir() and (manifests.stat().st_mode & 0o777) == 0o755
    assert manifests.stat().st_uid == 0
    config = root / "etc" / "edgeproxy.yaml"
    assert config.read_text() == (REPO / "config" / "edgeproxy.yaml").read_text()
    assert (root / "usr/local/share/doc/edgeproxy/daemon.md").is_file()
    current = opt / "current"
    version = subprocess.run([str(current / "bin" / "edgeproxy"), "--version"],
                             capture_output=True, text=True, env=_clean_env())
    assert head_commit() in version.stdout

    # The same bundle again changes nothing.
    before = _tree(root)
    again = install(bundle)
    assert "already installed" in again and _tree(root) == before

    # An upgrade: a newer bundle switches the release, keeps config, manifests and state.
    config.write_text(config.read_text() + "# edited by the operator\n")
    (manifests / "mine.yaml").write_text("# the operator's own manifest\n")
    newer = unpack(build_bundle(HOST_ARCH, HERE_PYTHON, tmp_path_factory.mktemp("dist2"),
                                EDGEPROXY_BUILD_COMMIT="f" * 40),
                   tmp_path_factory.mktemp("bundle2"))
    old_release = os.readlink(current)
    upgraded = install(newer)
    assert "current release" in upgraded and os.readlink(current) != old_release
    assert (opt / old_release).is_dir()  # the previous release stays for a rollback
    assert os.readlink(opt / "previous") == old_release
    again = install(newer)  # the same newer bundle again: still nothing lost
    assert "already installed" in again and (opt / old_release).is_dir()
    assert os.readlink(opt / "previous") == old_release
    assert config.read_text().endswith("# edited by the operator\n")
    assert (manifests / "mine.yaml").is_file()
    version = subprocess.run([str(current / "bin" / "edgeproxy"), "--version"],
                             capture_output=True, text=True, env=_clean_env())
    assert "f" * 40 in version.stdout

    # Uninstall keeps manifests and config; --purge removes them too.
    # --cleanup: with --root it cleans this test's own namespace only when asked.
    removed = netns.run([str(opt / "uninstall.sh"), "--root", str(root), "--cleanup"],
                        check=False)
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert not opt.exists() and not (root / "usr/local/bin/edgeproxy").is_symlink()
    assert not (root / "etc/systemd/system/edgeproxy.service").exists()
    assert config.is_file() and (manifests / "mine.yaml").is_file()
    dropin = root / "etc/systemd/system/edgeproxy.service.d"
    dropin.mkdir(parents=True)
    (dropin / "local.conf").write_text("[Service]\nEnvironment=X=1\n")
    install(bundle)
    kept = netns.run([str(opt / "uninstall.sh"), "--root", str(root)], check=False)
    assert kept.returncode == 0 and (dropin / "local.conf").is_file()  # the operator's
    install(bundle)
    purged = netns.run([str(opt / "uninstall.sh"), "--root", str(root), "--purge"],
                       check=False)
    assert purged.returncode == 0, purged.stdout + purged.stderr
    assert not config.exists() and not manifests.exists() and not dropin.exists()


def test_install_refuses_a_damaged_bundle(bundle, tmp_path):
    damaged = tmp_path / "damaged"
    shutil.copytree(bundle, damaged, symlinks=True)
    wheel = next((damaged / "wheels").glob("gevent-*.whl"))
    wheel.write_bytes(wheel.read_bytes()[:-100])  # a truncated copy
    result = subprocess.run([str(damaged / "install.sh"), "--root", str(tmp_path / "node"),
                             "--python", sys.executable], capture_output=True, text=True,
                            env=_clean_env())
    assert result.returncode == 1 and "damaged" in result.stderr, result.stderr
    assert not (tmp_path / "node" / "opt").exists()


def test_install_refuses_a_bundle_for_another_python(bundle, tmp_path):
    other = next((v for v in SUPPORTED_PYTHONS if v != HERE_PYTHON and find_python(v)), None)
    if other is None:
        pytest.skip("no second supported Python on this machine")
    result = subprocess.run([str(bundle / "install.sh"), "--root", str(tmp_path / "node"),
                             "--python", find_python(other)], capture_output=True, text=True,
                            env=_clean_env())
    assert result.returncode == 1
    assert f"bundle for CPython {HERE_PYTHON}" in result.stderr
    assert not (tmp_path / "node" / "opt").exists()


def test_aarch64_bundle_holds_only_aarch64_or_pure_wheels(tmp_path):
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        from build_bundle import for_target, parse_lock
    finally:
        sys.path.remove(str(REPO / "scripts"))
    for python in SUPPORTED_PYTHONS:
        top = unpack(build_bundle("aarch64", python, tmp_path / f"dist-{python}"),
                     tmp_path / f"bundle-{python}")
        cp = "cp" + python.replace(".", "")
        fetched = {}
        for wheel in (top / "wheels").glob("*.whl"):
            name, version, _, tags = parse_wheel_filename(wheel.name)
            fetched[name] = str(version)
            assert all(t.platform == "any" or t.platform.endswith("_aarch64") for t in tags), \
                wheel.name
            assert all(t.abi in ("none", "abi3", cp) for t in tags), wheel.name
        locked = for_target(parse_lock((REPO / "locks" / "runtime.txt").read_text()),
                            python, "aarch64")
        for entry in locked:  # every locked release for that target, at its locked version
            assert fetched.get(canonicalize_name(entry.name)) == entry.version, (entry, fetched)


@pytest.mark.parametrize("python", [v for v in SUPPORTED_PYTHONS if v != HERE_PYTHON])
def test_other_supported_pythons_run_the_bundle(python, tmp_path):
    interpreter = find_python(python)
    if interpreter is None:
        pytest.skip(f"no CPython {python} on this machine")
    top = unpack(build_bundle(HOST_ARCH, python, tmp_path / "dist"), tmp_path / "bundle")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    edgeproxy = install_wheelhouse(top, interpreter, tmp_path / "venv", elsewhere)
    env = _clean_env()
    shipped = offline([str(tmp_path / "venv" / "bin" / "python"), "-c",
                       "from edgeproxy.resources import example_manifests as e; print(e())"],
                      cwd=elsewhere, env=env).stdout.strip()
    valid = offline([str(edgeproxy), "validate", shipped], cwd=elsewhere, env=env)
    assert valid.returncode == 0, valid.stdout + valid.stderr
    demo = offline([str(edgeproxy), "demo"], cwd=elsewhere, env=env, timeout=240)
    assert demo.returncode == 0, demo.stdout[-4000:] + demo.stderr[-4000:]
