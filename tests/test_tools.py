"""edgeproxy.tools.LocalRunner: one Result contract, blocking or cooperative."""

from __future__ import annotations

import time

import gevent
import pytest

from edgeproxy.tools import LocalRunner, namespace_runner


@pytest.mark.parametrize("cooperative", [False, True])
def test_output_input_and_exit_status(cooperative):
    run = LocalRunner(cooperative=cooperative)
    result = run(["sh", "-c", "cat; echo err >&2; exit 3"], input="in\n")
    assert (result.returncode, result.stdout, result.stderr) == (3, "in\n", "err\n")


@pytest.mark.parametrize("cooperative", [False, True])
def test_missing_program_and_timeout_are_results_not_exceptions(cooperative):
    assert LocalRunner(cooperative=cooperative)(["no-such-tool-here"]).returncode == 127
    slow = LocalRunner(cooperative=cooperative, timeout=0.2)(["sleep", "5"])
    assert slow.returncode == 124 and "timed out" in slow.stderr


def test_cooperative_commands_and_reads_leave_the_hub_serving():
    run = LocalRunner(cooperative=True)
    ticks = []
    ticker = gevent.spawn(lambda: [ticks.append(gevent.sleep(0.02)) for _ in range(10)])
    started = time.monotonic()
    run(["sleep", "0.15"])
    run.off_hub(time.sleep, 0.1)  # a native thread: the hub runs meanwhile
    assert time.monotonic() - started >= 0.25 and len(ticks) >= 8
    ticker.kill()


def test_namespace_runner_prefixes_and_names_the_namespace():
    run = namespace_runner("ep-x")
    assert run.prefix == ["ip", "netns", "exec", "ep-x"] and run.netns == "ep-x"
    assert not run.cooperative
