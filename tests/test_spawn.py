"""edgeproxy.spawn.run: subprocess.run's contract (output, input, exit status, missing
program, timeout) and that the hub keeps running other greenlets while a command runs."""

from __future__ import annotations

import os
import subprocess
import time

import gevent
import pytest

from edgeproxy.spawn import run


def test_output_input_and_exit_status():
    result = run(["sh", "-c", "cat; echo err >&2; exit 3"], input="x" * 300_000)
    assert result.returncode == 3
    assert result.stdout == "x" * 300_000  # more than a pipe holds: both ends must stream
    assert result.stderr == "err\n"
    assert run(["true"]).stdout == "" and run(["true"]).returncode == 0


def test_missing_program_raises_like_subprocess():
    with pytest.raises(FileNotFoundError):
        run(["edgeproxy-no-such-tool"])


def test_timeout_kills_the_command():
    start = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        run(["sleep", "30"], timeout=0.3)
    assert time.monotonic() - start < 5


def test_signal_killed_command_reports_negative_status():
    assert run(["sh", "-c", "kill -9 $$"]).returncode == -9


def test_other_greenlets_run_while_a_command_runs():
    ticks = []

    def ticker():
        while True:
            ticks.append(time.monotonic())
            gevent.sleep(0.01)

    g = gevent.spawn(ticker)
    try:
        run(["sleep", "0.3"])
    finally:
        g.kill()
    assert len(ticks) >= 10


def test_many_concurrent_commands_leave_no_fds_or_zombies():
    before = len(os.listdir("/proc/self/fd"))
    jobs = [gevent.spawn(run, ["sh", "-c", f"echo {i}"]) for i in range(50)]
    gevent.joinall(jobs, raise_error=True)
    assert sorted(int(j.value.stdout) for j in jobs) == list(range(50))
    assert len(os.listdir("/proc/self/fd")) == before
    children = subprocess.run(["ps", "--ppid", str(os.getpid()), "-o", "stat="],
                              capture_output=True, text=True).stdout.split()
    assert not [s for s in children if s.startswith("Z")]


_PATCHED_MIX = r"""
from gevent import monkey; monkey.patch_all(queue=False)
import gevent
from gevent import subprocess as gsub
from edgeproxy.spawn import run
jobs = [gevent.spawn(run, ["sh", "-c", f"exit {i % 7}"]) for i in range(40)]
jobs += [gevent.spawn(gsub.run, ["sh", "-c", f"exit {i % 5}"]) for i in range(40)]
gevent.joinall(jobs, raise_error=True)
codes = [j.value.returncode for j in jobs]
assert codes == [i % 7 for i in range(40)] + [i % 5 for i in range(40)], codes
# A tool that waits for the end of its input (iptables-restore, nft -f) gets it at once,
# although gevent's patched os.close defers closes to the next loop iteration.
import time
start = time.monotonic()
for _ in range(3):
    # (no output before EOF: nothing else would wake the loop)
    assert run(["sh", "-c", "cat >/dev/null; echo done"], input="x", timeout=5).stdout == \
        "done\n"
assert time.monotonic() - start < 2
# Someone turns SIGCHLD handling off: exits are still noticed (pidfd / polling).
import signal
signal.signal(signal.SIGCHLD, signal.SIG_DFL)
assert run(["sh", "-c", "sleep 0.2; exit 4"], timeout=5).returncode == 4
print("ok")
"""


def test_mixed_with_gevent_subprocess_in_a_patched_daemon():
    """Both reap through libev's SIGCHLD handler: neither steals the other's exit status."""
    import sys

    result = subprocess.run([sys.executable, "-c", _PATCHED_MIX], capture_output=True,
                            text=True, timeout=60)
    assert result.stdout.strip() == "ok", result.stderr
