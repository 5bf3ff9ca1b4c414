"""Build the offline installation bundle for one CPU architecture and Python version.

    scripts/build-bundle --arch x86_64|aarch64 [--python 3.11] [--out dist]

writes ``dist/edgeproxy-VERSION-linux-ARCH-cpXY.tar.gz``, one directory inside:

    wheels/            edgeproxy's wheel, every locked runtime dependency for that platform, pip
    requirements.txt   exactly those wheels, each with its sha256 (pip --require-hashes)
    runtime.txt        the project's whole lock (locks/runtime.txt), for reference
    BUNDLE.json        version, commit, arch, Python, glibc floor, the sha256 of every file
    edgeproxy.service  edgeproxy.yaml (example config)  docs/  install.sh  uninstall.sh

The lock is the one source: its entries are filtered for the target (markers evaluated for
that Python and architecture on Linux) and fetched with ``pip download --only-binary=:all:
--require-hashes``, so a release published tomorrow cannot get in and nothing is compiled on
the node. Every wheel's tags are checked against the target before the archive is written.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from packaging.markers import Marker
from packaging.tags import Tag
from packaging.utils import canonicalize_name, parse_wheel_filename

REPO = Path(__file__).resolve().parents[1]
ARCHES = ("x86_64", "aarch64")
PYTHONS = ("3.11", "3.12", "3.13")
# manylinux_2_28 = glibc 2.28 (Debian 10, Ubuntu 18.10, RHEL 8) is the newest floor a locked
# wheel may ask for; a wheel needing more fails the build, not the install on a node.
GLIBC_FLOOR = (2, 28)
PACKAGING_DIR = REPO / "packaging"


@dataclass(frozen=True)
class Requirement:
    name: str
    version: str
    marker: str | None
    hashes: tuple[str, ...]

    def line(self) -> str:
        hashes = " \\\n".join(f"    --hash={h}" for h in self.hashes)
        return f"{self.name}=={self.version} \\\n{hashes}\n"


def parse_lock(text: str) -> list[Requirement]:
    """The entries of a uv/pip-compile hashed lock: ``name==version ; marker \\`` followed by
    ``--hash=`` lines (comments and ``# via`` annotations skipped)."""
    entries: list[Requirement] = []
    head: str | None = None
    hashes: list[str] = []

    def flush() -> None:
        if head is None:
            return
        spec, _, marker = head.partition(";")
        name, _, version = spec.strip().partition("==")
        entries.append(Requirement(name.strip(), version.strip(),
                                   marker.strip() or None, tuple(hashes)))

    for raw in text.splitlines():
        line = raw.split("#", 1)[0].rstrip().rstrip("\\").strip()
        if not line:
            continue
        if line.startswith("--hash="):
            hashes.append(line[len("--hash="):])
            continue
        flush()
        head, hashes = line, []
    flush()
    return entries


def target_environment(python: str, arch: str) -> dict[str, str]:
    return {"python_version": python, "python_full_version": f"{python}.0",
            "sys_platform": "linux", "platform_system": "Linux", "os_name": "posix",
            "platform_machine": arch, "platform_python_implementation": "CPython",
            "implementation_name": "cpython", "implementation_version": f"{python}.0",
            "platform_release": "", "platform_version": "", "extra": ""}


def for_target(entries: list[Requirement], python: str, arch: str) -> list[Requirement]:
    env = target_environment(python, arch)
    return [e for e in entries if e.marker is None or Marker(e.marker).evaluate(env)]


def accepted_tags(python: str, arch: str) -> set[Tag]:
    """Tags a CPython ``python`` on Linux/``arch`` with glibc >= GLIBC_FLOOR installs."""
    cp = "cp" + python.replace(".", "")
    platforms = {f"manylinux_2_{m}_{arch}" for m in range(5, GLIBC_FLOOR[1] + 1)}
    platforms |= {f"manylinux{legacy}_{arch}" for legacy in ("1", "2010", "2014")}
    platforms.add("any")
    interpreters = {cp, f"py{python.split('.')[0]}", f"py{python.replace('.', '')}", "py2.py3"}
    abis = {cp, "abi3", "none"}
    return {Tag(i, a, p) for i in interpreters for a in abis for p in platforms}


def check_wheel(path: Path, python: str, arch: str) -> None:
    """Raise unless this wheel installs on the target (an ``arch`` or pure-Python tag)."""
    _, _, _, tags = parse_wheel_filename(path.name)
    if not tags & accepted_tags(python, arch):
        raise SystemExit(f"build-bundle: {path.name} does not install on CPython {python} "
                         f"linux/{arch} with glibc {GLIBC_FLOOR[0]}.{GLIBC_FLOOR[1]}")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def pip(*args: str, **extra_env: str) -> None:
    # No pip configuration of the build machine (PIP_CONFIG_FILE=/dev/null skips every config
    # file, --isolated the PIP_* variables): its find-links or constraints must not decide
    # what ends up on every node. The hashes would refuse a foreign file anyway.
    env = {**os.environ, "PIP_CONFIG_FILE": os.devnull, **extra_env}
    subprocess.run([sys.executable, "-m", "pip", "--isolated", "--disable-pip-version-check",
                    *args], check=True, env=env)


def export_tree(into: Path, allow_dirty: bool) -> str:
    """The files git tracks, into ``into`` (never the checkout's own build/ leftovers, nor
    untracked files); returns the commit the wheel will name. A tree with uncommitted changes
    is refused unless ``allow_dirty`` (then its tracked files as they are, "-dirty")."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(REPO), *args], check=True, capture_output=True,
                              text=True).stdout

    commit = git("rev-parse", "HEAD").strip()
    dirty = bool(git("status", "--porcelain", "--untracked-files=no").strip())
    if dirty and not allow_dirty:
        raise SystemExit("build-bundle: the checkout has uncommitted changes; commit them, or "
                         "pass --allow-dirty for a bundle of the tree as it is")
    files = [f for f in git("ls-files", "-z").split("\0") if f]
    into.mkdir(parents=True)
    with tempfile.TemporaryFile() as archive:
        with tarfile.open(fileobj=archive, mode="w") as tar:
            for name in files:
                if os.path.lexists(REPO / name):  # a tracked file deleted in a dirty tree
                    tar.add(REPO / name, arcname=name, recursive=False)
        archive.seek(0)
        with tarfile.open(fileobj=archive) as tar:
            tar.extractall(into, filter="tar")
    return commit + ("-dirty" if dirty else "")


def build_wheel(into: Path, allow_dirty: bool) -> Path:
    with tempfile.TemporaryDirectory(prefix="edgeproxy-src-") as scratch:
        source = Path(scratch) / "src"
        commit = export_tree(source, allow_dirty)
        # An explicit EDGEPROXY_BUILD_COMMIT wins (a release pipeline naming its own source).
        commit = os.environ.get("EDGEPROXY_BUILD_COMMIT") or commit
        pip("wheel", "-q", "--no-deps", "--no-build-isolation", "--wheel-dir", str(into),
            str(source), EDGEPROXY_BUILD_COMMIT=commit)
    wheels = list(into.glob("edgeproxy-*.whl"))
    if len(wheels) != 1:
        raise SystemExit(f"build-bundle: expected one edgeproxy wheel, found {wheels}")
    return wheels[0]


def download(requirements: list[Requirement], python: str, arch: str, into: Path) -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as req:
        req.write("".join(r.line() for r in requirements))
        req.flush()
        platforms = sorted({t.platform for t in accepted_tags(python, arch)} - {"any"})
        args = ["download", "-q", "--no-deps", "--only-binary=:all:", "--require-hashes",
                "--implementation", "cp", "--python-version", python, "--dest", str(into),
                "-r", req.name]
        for platform in platforms:
            args += ["--platform", platform]
        pip(*args)


def wheel_commit(wheel: Path) -> str:
    import ast
    import zipfile

    with zipfile.ZipFile(wheel) as archive:
        tree = ast.parse(archive.read("edgeproxy/_build_commit.py").decode())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "COMMIT":
            return str(ast.literal_eval(node.value))
    return "unknown"


def build(arch: str, python: str, out: Path, allow_dirty: bool = False) -> Path:
    from edgeproxy import __version__

    runtime_lock = (REPO / "locks" / "runtime.txt").read_text()
    dev_lock = (REPO / "locks" / "dev.txt").read_text()
    deps = for_target(parse_lock(runtime_lock), python, arch)
    pip_entry = [e for e in for_target(parse_lock(dev_lock), python, arch) if e.name == "pip"]
    name = f"edgeproxy-{__version__}-linux-{arch}-cp{python.replace('.', '')}"
    with tempfile.TemporaryDirectory(prefix="edgeproxy-bundle-") as scratch:
        top = Path(scratch) / name
        wheels = top / "wheels"
        wheels.mkdir(parents=True)
        own = build_wheel(wheels, allow_dirty)
        download(deps + pip_entry, python, arch, wheels)
        for wheel in sorted(wheels.glob("*.whl")):
            check_wheel(wheel, python, arch)
        fetched = {parse_wheel_filename(w.name)[0] for w in wheels.glob("*.whl")}
        missing = {canonicalize_name(e.name) for e in deps + pip_entry} - fetched
        if missing:
            raise SystemExit(f"build-bundle: no wheel fetched for {sorted(missing)}")
        own_entry = Requirement("edgeproxy", __version__, None, (f"sha256:{sha256(own)}",))
        (top / "requirements.txt").write_text(
            "# What install.sh installs, and nothing else: pip --no-index --require-hashes.\n"
            + "".join(e.line() for e in [own_entry, *deps]))
        (top / "pip.txt").write_text("".join(e.line() for e in pip_entry))
        shutil.copy(REPO / "locks" / "runtime.txt", top / "runtime.txt")
        shutil.copy(REPO / "edgeproxy.service", top / "edgeproxy.service")
        shutil.copy(REPO / "config" / "edgeproxy.yaml", top / "edgeproxy.yaml")
        shutil.copytree(REPO / "docs", top / "docs")
        for script in ("install.sh", "uninstall.sh"):
            shutil.copy(PACKAGING_DIR / script, top / script)
            os.chmod(top / script, 0o755)
        files = {str(p.relative_to(top)): sha256(p) for p in sorted(top.rglob("*"))
                 if p.is_file()}
        meta = {"name": "edgeproxy", "version": __version__, "commit": wheel_commit(own),
                "arch": arch, "python": python,
                "glibc": f"{GLIBC_FLOOR[0]}.{GLIBC_FLOOR[1]}", "files": files}
        (top / "BUNDLE.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        out.mkdir(parents=True, exist_ok=True)
        archive = out / f"{name}.tar.gz"
        _write_tar(top, archive)
    return archive


def _write_tar(top: Path, archive: Path) -> None:
    """A tar.gz with sorted entries, root ownership and one timestamp (reproducible)."""
    mtime = int(os.environ.get("SOURCE_DATE_EPOCH", "0")) or 1_700_000_000

    def normalise(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        info.mtime = mtime
        return info

    partial = archive.with_suffix(".partial")
    with open(partial, "wb") as raw:
        import gzip

        with gzip.GzipFile(fileobj=raw, mode="wb", mtime=mtime) as gz:
            buffer = io.BufferedWriter(gz)  # type: ignore[arg-type]
            with tarfile.open(fileobj=buffer, mode="w") as tar:
                paths = [top, *sorted(top.rglob("*"))]
                for path in paths:
                    tar.add(path, arcname=str(Path(top.name) / path.relative_to(top)),
                            recursive=False, filter=normalise)
            buffer.flush()
    os.replace(partial, archive)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="build-bundle", description=__doc__.split("\n")[0])
    parser.add_argument("--arch", required=True, choices=ARCHES)
    parser.add_argument("--python", default="%d.%d" % sys.version_info[:2], choices=PYTHONS,
                        help="CPython version of the target nodes (default: this one)")
    parser.add_argument("--out", type=Path, default=REPO / "dist",
                        help="directory for the archive (default: dist/)")
    parser.add_argument("--allow-dirty", action="store_true",
                        help="bundle the tracked files as they are, uncommitted changes included "
                             "(the commit is marked -dirty)")
    args = parser.parse_args(argv)
    print(build(args.arch, args.python, args.out, args.allow_dirty))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    raise SystemExit(main())
