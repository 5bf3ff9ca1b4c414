"""Choosing upstreams: resolv.conf like the C library, never ourselves."""

from __future__ import annotations

import pytest

from edgeproxy.dns.upstream import choose_upstreams, parse_resolv_conf, parse_upstream


def test_resolv_conf_nameservers_at_most_three():
    text = ("# comment\nsearch lan\nnameserver 192.0.2.1\nnameserver fe80::1%eth0\n"
            "nameserver bogus\nnameserver 192.0.2.2 ; x\nnameserver 192.0.2.3\n")
    assert parse_resolv_conf(text) == [("192.0.2.1", 53), ("fe80::1%eth0", 53),
                                       ("192.0.2.2", 53)]


@pytest.mark.parametrize("text, expected", [
    ("192.0.2.1", ("192.0.2.1", 53)), ("192.0.2.1:5353", ("192.0.2.1", 5353)),
    ("fd00::1", ("fd00::1", 53)), ("[fd00::1]:5353", ("fd00::1", 5353))])
def test_parse_upstream(text, expected):
    assert parse_upstream(text) == expected


def test_bad_upstreams_are_refused():
    for bad in ("nonsense", "192.0.2.1:0", "[fd00::1]x"):
        with pytest.raises(ValueError):
            parse_upstream(bad)


def test_never_forward_to_ourselves(tmp_path):
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 169.254.96.53\nnameserver 192.0.2.1\n")
    own = [("169.254.96.53", 53)]
    assert choose_upstreams((), own, conf) == [("192.0.2.1", 53)]
    assert choose_upstreams(("192.0.2.9:53",), own, conf) == [("192.0.2.9", 53)]
    assert choose_upstreams((), own, tmp_path / "missing") == []
