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
