"""tests/support/node.py: reading one metric from the daemon's /metrics text."""

from tests.support.node import metric_value


def test_metric_value_sums_matching_samples():
    text = ('# HELP x_total help\n# TYPE x_total counter\n'
            'x_total{file="a.yaml",kind="syntax"} 2.0\nx_total{file="b.yaml"} 3.0\n'
            'x_total_created 1.7e9\ny 1\n')
    assert metric_value(text, "x_total") == 5.0
    assert metric_value(text, "x_total", {"file": "a.yaml"}) == 2.0
    assert metric_value(text, "y") == 1.0
    assert metric_value(text, "z") is None
