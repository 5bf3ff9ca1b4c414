"""A Daemon started with the fakes of tests/daemon/fakes.py; its HTTP servers are off (port 0)."""

import pytest

from edgeproxy.daemon.config import build_config
from edgeproxy.daemon.core import Daemon
from tests.daemon.fakes import FakeComputer, FakeDns, FakeKeeper, FakeProxy


@pytest.fixture
def daemon():
    config = build_config({"config": None, "healthz_bind_address": "127.0.0.1:0",
                           "metrics_bind_address": "127.0.0.1:0", "manifests": "/nonexistent",
                           "drain_grace": "0s"})
    computer, proxy = FakeComputer(), FakeProxy()
    keeper = FakeKeeper(proxy.calls)
    d = Daemon(config, factories={"computer": lambda: computer, "proxy": lambda: proxy,
                                  "keeper": lambda: keeper,
                                  "render": lambda: lambda ports, pp, listen, second: dict(pp),
                                  "dns": FakeDns},
               watch=False, environ={})
    d.start()
    yield d
    d.shutdown("test")
    d._done.wait(5)
