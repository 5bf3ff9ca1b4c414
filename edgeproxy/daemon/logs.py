"""Daemon logging: one line per event, key=value or JSON, journald-aware and storm-proof.

- ``log_event(logger, level, "message", key=value, ...)`` attaches structured fields; records
  from other modules (plain ``logger.warning("dial %s failed", ep)``) are formatted the same way.
- Under systemd (``JOURNAL_STREAM`` names our stderr) lines carry no timestamp (journald adds its
  own) and start with a ``<N>`` syslog priority, which journald turns into the entry's level.
  Where python3-systemd is importable, entries go to the journal natively instead, with every
  field as a journal field (``EDGEPROXY_SERVICE=...``) besides the same one-line message.
- A rate limit per message template (logger name + unformatted message): a burst passes, then at
  most one line per interval; the next line that passes says how many were suppressed. A dead
  endpoint under load thus costs a few journal lines per minute, not thousands per second.
- Tracebacks are for bugs only: expected errors are logged without ``exc_info``; when a traceback
  is logged it is folded into the single line (JSON-escaped) so the journal keeps one event per
  entry.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from collections import OrderedDict
from typing import Any, Callable, TextIO

_SYSLOG_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
                    logging.CRITICAL: 2}
FIELDS_ATTR = "edgeproxy_fields"


def log_event(logger: logging.Logger, level: int, message: str, **fields: Any) -> None:
    """Log ``message`` with structured key=value fields (rate-limited per message)."""
    if logger.isEnabledFor(level):
        logger.log(level, message, extra={FIELDS_ATTR: fields})


def _quote(value: Any) -> str:
    text = value if isinstance(value, str) else str(value) if not isinstance(value, (dict, list)) \
        else json.dumps(value, separators=(",", ":"), default=str)
    if text == "" or any(c in text for c in ' ="\\\n\t') or not text.isprintable():
        return json.dumps(text, ensure_ascii=False)
    return text


def journald_attached(stream: TextIO | None = None) -> bool:
    """True when our stderr is the journal stream systemd told us about (JOURNAL_STREAM)."""
    value = os.environ.get("JOURNAL_STREAM", "")
    if not value:
        return False
    try:
        dev, ino = (int(part) for part in value.split(":", 1))
        st = os.fstat((stream or sys.stderr).fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return st.st_dev == dev and st.st_ino == ino


class _BaseFormatter(logging.Formatter):
    def __init__(self, journald: bool = False) -> None:
        super().__init__()
        self.journald = journald  # journald's stream: a <N> priority prefix, no timestamp
        self.include_timestamp = not journald

    def _fields(self, record: logging.LogRecord) -> dict[str, Any]:
        fields = {k: v for k, v in (getattr(record, FIELDS_ATTR, None) or {}).items()
                  if v is not None}
        suppressed = getattr(record, "edgeproxy_suppressed", 0)
        if suppressed:
            fields["suppressed"] = suppressed
        if record.exc_info:
            fields["traceback"] = self.formatException(record.exc_info)
        return fields

    def _timestamp(self, record: logging.LogRecord) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + \
            f".{int(record.msecs):03d}Z"


class KeyValueFormatter(_BaseFormatter):
    """``ts=... level=info logger=edgeproxy.daemon msg="sync applied" ports=12``."""

    def format(self, record: logging.LogRecord) -> str:
        parts = []
        if self.journald:
            prefix = f"<{_SYSLOG_PRIORITY.get(record.levelno, 6)}>"
        else:
            prefix = ""
            if self.include_timestamp:
                parts.append(f"ts={self._timestamp(record)}")
        parts.append(f"level={record.levelname.lower()}")
        parts.append(f"logger={record.name}")
        parts.append(f"msg={_quote(record.getMessage())}")
        for key, value in self._fields(record).items():
            parts.append(f"{key}={_quote(value)}")
        return prefix + " ".join(parts)


class JsonFormatter(_BaseFormatter):
    """One JSON object per line: ts (omitted under journald), level, logger, msg, fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {}
        if not self.journald:
            if self.include_timestamp:
                out["ts"] = self._timestamp(record)
        out["level"] = record.levelname.lower()
        out["logger"] = record.name
        out["msg"] = record.getMessage()
        for key, value in self._fields(record).items():
            out.setdefault(key, value)
        line = json.dumps(out, ensure_ascii=False, default=str)
        if self.journald:
            return f"<{_SYSLOG_PRIORITY.get(record.levelno, 6)}>{line}"
        return line


class RateLimitFilter(logging.Filter):
    """Token bucket per message template: ``burst`` lines at once, then one per ``interval``.

    Keys are (logger, unformatted msg), so "dial 198.18.1.11:8080 failed" and the same message
    for another endpoint share one bucket when logged as ``"dial %s failed", ep``. At most
    ``max_keys`` buckets are kept (least recently used dropped), bounding memory.
    """

    def __init__(self, burst: int = 5, interval: float = 10.0, max_keys: int = 1024,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.burst = burst
        self.interval = interval
        self.max_keys = max_keys
        self.clock = clock
        self._buckets: OrderedDict[tuple[str, str], list[float]] = OrderedDict()
        self.suppressed_total = 0

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, str(record.msg))
        now = self.clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = [float(self.burst), now, 0]  # tokens, last refill, suppressed count
            self._buckets[key] = bucket
            if len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            bucket[0] = min(float(self.burst), bucket[0] + (now - bucket[1]) / self.interval)
            bucket[1] = now
        if bucket[0] >= 1.0:
            bucket[0] -= 1.0
            if bucket[2]:
                record.edgeproxy_suppressed = int(bucket[2])
                bucket[2] = 0
            return True
        bucket[2] += 1
        self.suppressed_total += 1
        return False


_FIELD_NAME = re.compile(r"[^A-Z0-9_]")


def journal_fields(record: logging.LogRecord) -> dict[str, str]:
    """A record's structured fields as journal fields: ``EDGEPROXY_<KEY>`` (upper case,
    [A-Z0-9_] only, as journald requires), plus the logger and the syslog priority."""
    fields = {"PRIORITY": str(_SYSLOG_PRIORITY.get(record.levelno, 6)),
              "SYSLOG_IDENTIFIER": "edgeproxy", "EDGEPROXY_LOGGER": record.name}
    for key, value in (getattr(record, FIELDS_ATTR, None) or {}).items():
        if value is None:
            continue
        name = "EDGEPROXY_" + _FIELD_NAME.sub("_", str(key).upper())
        fields[name] = value if isinstance(value, str) else json.dumps(value, default=str) \
            if isinstance(value, (dict, list)) else str(value)
    return fields


class JournalHandler(logging.Handler):
    """Native journal entries through python3-systemd's ``systemd.journal.send`` (when it is
    importable and journald holds our stderr): the same one-line message, plus every field as
    a journal field, so ``journalctl -u edgeproxy EDGEPROXY_SERVICE=default/web`` filters."""

    def __init__(self, send: Callable[..., Any], formatter: logging.Formatter) -> None:
        super().__init__()
        self.send = send
        self.setFormatter(formatter)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.send(self.format(record), **journal_fields(record))
        except Exception:  # noqa: BLE001 - logging must never raise into the caller
            self.handleError(record)


def _journal_send() -> Callable[..., Any] | None:
    try:
        from systemd import journal  # type: ignore[import-not-found]  # python3-systemd
    except ImportError:
        return None
    return getattr(journal, "send", None)


def configure_logging(fmt: str = "text", verbosity: int = 0, stream: TextIO | None = None,
                      rate_limit: RateLimitFilter | None = None) -> logging.Handler:
    """Install the daemon's single log handler on the root logger; returns the handler:
    native journal entries with fields when journald holds stderr and python3-systemd is
    importable, else one line per event on stderr."""
    stream = stream or sys.stderr
    journald = journald_attached(stream)
    send = _journal_send() if journald else None
    handler: logging.Handler
    if send is not None:
        # No <N> prefix and no timestamp in MESSAGE: the entry has PRIORITY and its own time.
        formatter = JsonFormatter(journald=False) if fmt == "json" else KeyValueFormatter(False)
        formatter.include_timestamp = False
        handler = JournalHandler(send, formatter)
    else:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(JsonFormatter(journald) if fmt == "json"
                             else KeyValueFormatter(journald))
    handler.addFilter(rate_limit or RateLimitFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbosity >= 1 else logging.INFO)
    return handler


def install_hub_error_handler(hub: Any = None) -> None:
    """Route errors the gevent hub reports (a greenlet or callback that raised) into the
    log as one rate-limited line with the error and where it happened, instead of gevent's
    multi-line traceback on stderr. The traceback itself is kept only at debug verbosity."""
    import traceback

    import gevent

    hub = hub or gevent.get_hub()
    log = logging.getLogger("edgeproxy.hub")

    def print_exception(context: Any, kind: type, value: BaseException, tb: Any) -> None:
        frames = traceback.extract_tb(tb) if tb is not None else []
        where = f"{frames[-1].filename}:{frames[-1].lineno} in {frames[-1].name}" \
            if frames else None
        fields: dict[str, Any] = {"error": f"{kind.__name__}: {value}", "at": where,
                                  "context": repr(context)[:200] if context is not None else None}
        if log.isEnabledFor(logging.DEBUG):
            fields["traceback"] = "".join(traceback.format_exception(kind, value, tb))
        log_event(log, logging.ERROR, "unexpected error in the event loop", **fields)

    hub.print_exception = print_exception
