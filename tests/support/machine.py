"""A real systemd for tests: a debootstrapped Debian booted with systemd-nspawn.

The host has no systemd as PID 1 (and no D-Bus), so the container is started with
``--register=no --keep-unit`` and driven with ``nsenter -t <its PID 1> -a``; its network is
private (``--private-network``: its own namespace, CAP_NET_ADMIN inside, both iptables
flavours usable), so nothing it does reaches the host's rules.

The root file system is built once per package list with ``debootstrap --variant=minbase``
(about a minute and 300 MB; needs Debian's mirror) into ``CACHE_DIR`` and reused by later runs;
each `Machine` boots a copy of it. nspawn runs inside a cgroup of our own (one per machine),
which is removed afterwards with whatever nspawn left below it (``payload``, ``supervisor``),
so parallel runs do not meet and nothing accumulates under /sys/fs/cgroup.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shlex
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import Sequence

CACHE_DIR = Path(os.environ.get("EDGEPROXY_TEST_CACHE", "/var/cache/edgeproxy-tests"))
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
PACKAGES = ("systemd", "systemd-sysv", "dbus", "iproute2", "iptables", "nftables", "python3",
            "conntrack", "python3-systemd")
CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroup_hierarchies() -> tuple[Path, ...]:
    """Where nspawn's cgroup of ours goes: the unified hierarchy itself on a cgroup2-only
    host, the named systemd and the unified one on a hybrid host (this one)."""
    if (CGROUP_ROOT / "cgroup.controllers").exists():
        return (CGROUP_ROOT,)
    return tuple(CGROUP_ROOT / name for name in ("systemd", "unified")
                 if (CGROUP_ROOT / name).is_dir())


def unavailable_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (debootstrap, systemd-nspawn)"
    for tool in ("systemd-nspawn", "debootstrap", "nsenter"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (scripts/bootstrap installs it)"
    if not cgroup_hierarchies():
        return "no cgroup hierarchy under /sys/fs/cgroup"
    return None


def base_root() -> Path:
    """The cached debootstrap of PACKAGES (built on first use, atomically, under a lock)."""
    key = hashlib.sha256(" ".join((SUITE, MIRROR, *PACKAGES)).encode()).hexdigest()[:12]
    root = CACHE_DIR / f"{SUITE}-{key}"
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with open(CACHE_DIR / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (root / ".complete").exists():
            return root
        partial = root.with_name(root.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        result = subprocess.run(["debootstrap", "--variant=minbase",
                                 "--include=" + ",".join(PACKAGES), SUITE, str(partial), MIRROR],
                                capture_output=True, text=True, timeout=1200)
        if result.returncode != 0:
            shutil.rmtree(partial, ignore_errors=True)
            raise RuntimeError(f"debootstrap failed: {result.stdout[-2000:]}{result.stderr}")
        # A quiet, fast boot: no getty on the console we do not read.
        (partial / "etc/systemd/system/console-getty.service").symlink_to("/dev/null")
        (partial / ".complete").write_text("")
        partial.rename(root)
    return root


class Machine:
    """One booted container, a copy of `base_root()` under ``workdir``."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.root = workdir / "root"
        self.cgroup = f"edgeproxy-test-{uuid.uuid4().hex[:8]}"
        self.proc: subprocess.Popen | None = None
        self.leader: int | None = None
        self.console = workdir / "console.log"

    # -- lifecycle -----------------------------------------------------------------------------
    def boot(self, timeout: float = 60.0) -> "Machine":
        """Copy the base root and boot systemd in it; on any failure everything started or
        copied so far is removed again (callers only shut down a machine that booted)."""
        try:
            return self._boot(timeout)
        except BaseException:
            self.shutdown()
            raise

    def _boot(self, timeout: float) -> "Machine":
        subprocess.run(["cp", "-a", "--reflink=auto", str(base_root()), str(self.root)],
                       check=True)
        for hierarchy in cgroup_hierarchies():
            (hierarchy / self.cgroup).mkdir(exist_ok=True)
        enter = "; ".join(f"echo $$ > {shlex.quote(str(h / self.cgroup / 'cgroup.procs'))}"
                          for h in cgroup_hierarchies())
        with open(self.console, "wb") as console:
            self.proc = subprocess.Popen(
                ["sh", "-c", f"{enter}; exec systemd-nspawn -q -D {shlex.quote(str(self.root))} "
                             "--boot --register=no --keep-unit --private-network"],
                stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
                start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"systemd-nspawn exited: {self.console.read_text()[-2000:]}")
            self.leader = self.leader or self._find_leader()
            if self.leader is not None:
                state = self.run(["systemctl", "is-system-running"], check=False).stdout.strip()
                if state in ("running", "degraded"):
                    return self
            time.sleep(0.2)
        raise RuntimeError(f"container did not boot in {timeout} s")

    def _find_leader(self) -> int | None:
        """PID (on the host) of the container's systemd: nspawn's child."""
        assert self.proc is not None
        for task in Path(f"/proc/{self.proc.pid}/task").glob("*/children"):
            for pid in task.read_text().split():
                with contextlib.suppress(OSError):
                    if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                        return int(pid)
        return None

    def shutdown(self, timeout: float = 30.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            if self.leader is not None:
                self.run(["systemctl", "poweroff"], check=False, timeout=10)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait(timeout=10)
        self._remove_cgroups()
        shutil.rmtree(self.root, ignore_errors=True)

    def _remove_cgroups(self) -> None:
        for hierarchy in cgroup_hierarchies():
            top = hierarchy / self.cgroup
            if not top.exists():
                continue
            for directory in sorted((p for p in top.rglob("*") if p.is_dir()),
                                    key=lambda p: len(p.parts), reverse=True):
                with contextlib.suppress(OSError):
                    directory.rmdir()
            with contextlib.suppress(OSError):
                top.rmdir()

    def __enter__(self) -> "Machine":
        return self.boot()

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # -- inside --------------------------------------------------------------------------------
    def run(self, argv: Sequence[str], check: bool = True, timeout: float = 60.0,
            input: str | None = None) -> subprocess.CompletedProcess:
        """Run ``argv`` inside the container (all its namespaces, its root)."""
        assert self.leader is not None
        result = subprocess.run(["nsenter", "-t", str(self.leader), "-a", *argv],
                                capture_output=True, text=True, timeout=timeout, input=input,
                                env={"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:"
                                             "/sbin:/bin", "LANG": "C.UTF-8"})
        if check and result.returncode != 0:
            raise RuntimeError(f"`{' '.join(argv)}` in the container failed "
                               f"({result.returncode}): {result.stdout[-2000:]}"
                               f"{result.stderr[-2000:]}")
        return result

    def sh(self, script: str, check: bool = True, timeout: float = 60.0
           ) -> subprocess.CompletedProcess:
        return self.run(["sh", "-c", script], check=check, timeout=timeout)

    def path(self, inside: str) -> Path:
        """Where a path of the container lies on the host."""
        return self.root / inside.lstrip("/")

    def unit_property(self, unit: str, name: str) -> str:
        return self.run(["systemctl", "show", "-p", name, "--value", unit]).stdout.strip()
