import io
import json
import logging

from edgeproxy.daemon.logs import (JsonFormatter, KeyValueFormatter, RateLimitFilter,
                                   log_event)


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _logger(formatter, filt=None):
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    if filt:
        handler.addFilter(filt)
    logger = logging.getLogger(f"test.{id(stream)}")
    logger.handlers = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger, stream


def test_key_value_line():
    logger, stream = _logger(KeyValueFormatter())
    log_event(logger, logging.INFO, "sync applied", ports=3, file="/etc/a b.yaml", skip=None)
    line = stream.getvalue()
    assert line.count("\n") == 1
    assert 'msg="sync applied"' in line and "ports=3" in line and 'file="/etc/a b.yaml"' in line
    assert "skip=" not in line and "ts=" in line


def test_journald_no_timestamp_priority_prefix():
    logger, stream = _logger(KeyValueFormatter(journald=True))
    logger.error("boom")
    assert stream.getvalue().startswith("<3>level=error") and "ts=" not in stream.getvalue()


def test_json_and_traceback_on_one_line():
    logger, stream = _logger(JsonFormatter())
    try:
        raise ValueError("x")
    except ValueError:
        logger.exception("bug")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    doc = json.loads(lines[0])
    assert doc["msg"] == "bug" and "ValueError" in doc["traceback"]


def test_rate_limit_per_template_and_suppressed_count():
    clock = Clock()
    limiter = RateLimitFilter(burst=3, interval=10.0, clock=clock)
    logger, stream = _logger(KeyValueFormatter(), limiter)
    for i in range(1000):
        logger.warning("dial %s failed", f"198.18.1.{i % 250}:80")
    logger.warning("another message")
    assert len(stream.getvalue().splitlines()) == 4  # burst of 3 + the other template
    clock.now = 10.0
    logger.warning("dial %s failed", "198.18.1.1:80")
    last = stream.getvalue().splitlines()[-1]
    assert "suppressed=997" in last
    assert limiter.suppressed_total == 997


def test_native_journal_entries_carry_fields_when_python3_systemd_is_there(monkeypatch,
                                                                           tmp_path):
    """python3-systemd is optional: with a `systemd.journal` module and journald holding
    stderr, each event is one journal entry with its fields; without, stderr lines."""
    import os
    import sys
    import types

    from edgeproxy.daemon import logs as logs_module

    sent = []
    journal = types.ModuleType("systemd.journal")
    journal.send = lambda message, **fields: sent.append((message, fields))
    package = types.ModuleType("systemd")
    package.journal = journal
    monkeypatch.setitem(sys.modules, "systemd", package)
    monkeypatch.setitem(sys.modules, "systemd.journal", journal)
    stream = open(tmp_path / "stderr", "w")
    st = os.fstat(stream.fileno())
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    import logging

    handler = logs_module.configure_logging("text", 0, stream=stream)
    try:
        assert isinstance(handler, logs_module.JournalHandler)
        logs_module.log_event(logging.getLogger("edgeproxy.forwarding"), logging.WARNING,
                              "dial failed", service="default/web", endpoint="198.18.1.11:8080",
                              attempts=3, **{"retry-in": 0.5})
        (message, fields), = sent
        assert message == ('level=warning logger=edgeproxy.forwarding msg="dial failed" '
                           'service=default/web endpoint=198.18.1.11:8080 attempts=3 '
                           'retry-in=0.5')
        assert fields == {"PRIORITY": "4", "SYSLOG_IDENTIFIER": "edgeproxy",
                          "EDGEPROXY_LOGGER": "edgeproxy.forwarding",
                          "EDGEPROXY_SERVICE": "default/web",
                          "EDGEPROXY_ENDPOINT": "198.18.1.11:8080", "EDGEPROXY_ATTEMPTS": "3",
                          "EDGEPROXY_RETRY_IN": "0.5"}
        monkeypatch.setitem(sys.modules, "systemd.journal", None)  # not installed
        monkeypatch.setitem(sys.modules, "systemd", None)
        assert not isinstance(logs_module.configure_logging("text", 0, stream=stream),
                              logs_module.JournalHandler)
    finally:
        logging.getLogger().handlers.clear()
        stream.close()
