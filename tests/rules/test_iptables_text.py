"""Parsing iptables-save text and comparing rules semantically."""

from __future__ import annotations

import pytest

from edgeproxy.rules.iptables_text import ParseError, format_rule, normalize, parse_save, split_rule


def test_equivalent_spellings_compare_equal():
    a = ("-d", "198.19.0.10", "-p", "TCP", "-m", "comment", "--comment", "default/web",
         "-m", "tcp", "--dport", "80", "-j", "DNAT", "--to-destination", "169.254.96.17:61000")
    b = ("-m", "comment", "--comment", "default/web", "-p", "tcp", "-m", "tcp", "--dport", "80",
         "--destination", "198.19.0.10/32", "-j", "DNAT", "--to-destination",
         "169.254.96.17:61000")
    assert normalize(a) == normalize(b)
    assert normalize(a) != normalize(a[:11] + ("81",) + a[12:])
    neg = ("-m", "conntrack", "!", "--ctstate", "DNAT", "-j", "DROP")
    assert normalize(neg) != normalize(("-m", "conntrack", "--ctstate", "DNAT", "-j", "DROP"))
    assert normalize(("!", "-d", "10.0.0.1", "-j", "X")) != normalize(("-d", "10.0.0.1", "-j", "X"))


def test_quoting_round_trips():
    tokens = ["-m", "comment", "--comment", 'a "quoted" comment\\x', "-j", "RETURN"]
    line = format_rule(tokens)
    assert split_rule(line) == tokens
    assert format_rule(["-d", "1.2.3.4/32"]) == "-d 1.2.3.4/32"
    assert split_rule('--comment ""') == ["--comment", ""]


def test_restore_operations_replay_like_iptables():
    base = parse_save("*nat\n:PREROUTING ACCEPT [0:0]\n:A - [0:0]\n-A PREROUTING -j A\n"
                      "-A A -j RETURN\nCOMMIT\n")
    after = parse_save("*nat\n:PREROUTING ACCEPT [0:0]\n:B - [0:0]\n-I PREROUTING 1 -j B\n"
                       "-D PREROUTING -j A\n-F A\n-X A\nCOMMIT\n", into=base)
    assert [r.target for r in after["nat"].rules("PREROUTING")] == ["B"]
    assert "A" not in after["nat"].chains
    # The input tables are not modified; a user chain declaration flushes, a built-in does not.
    assert [r.target for r in base["nat"].rules("PREROUTING")] == ["A"]
    again = parse_save("*nat\n:PREROUTING ACCEPT [0:0]\n:A - [0:0]\nCOMMIT\n", into=base)
    assert again["nat"].rules("PREROUTING") and again["nat"].rules("A") == []


def test_malformed_input_is_rejected_with_the_line():
    with pytest.raises(ParseError, match="line 1"):
        parse_save("-A X -j Y\n")
    with pytest.raises(ParseError, match="line 2: unbalanced"):
        parse_save('*nat\n-A X -m comment --comment "oops -j Y\nCOMMIT\n')
