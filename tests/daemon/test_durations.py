import pytest

from edgeproxy.daemon.durations import DurationError, parse_duration


@pytest.mark.parametrize("text,seconds", [
    ("100ms", 0.1), ("1s", 1.0), ("1m30s", 90.0), ("1.5h", 5400.0), ("250us", 0.00025),
    ("0", 0.0), ("30", 30.0), (2, 2.0), ("2.5", 2.5),
])
def test_parse(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "1x", "ms", "-1s", "1s ms", "1 s", True, -3])
def test_rejects(text):
    with pytest.raises(DurationError):
        parse_duration(text)

