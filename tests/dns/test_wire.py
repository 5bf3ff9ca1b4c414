"""Question keys, template patching, size limits and truncation."""

from __future__ import annotations

from dnslib import EDNS0, DNSRecord

from edgeproxy.dns import wire
from edgeproxy.dns.answer import decide
from edgeproxy.dns.records import build_zone
from tests.dns.zone_fixture import objects

ZONE = build_zone(objects())


def query(name="web.default.svc.cluster.local", qtype="A", edns=None, do=False):
    q = DNSRecord.question(name, qtype)
    if edns is not None:
        q.add_ar(EDNS0(udp_len=edns, flags="do" if do else ""))
    return bytes(q.pack())


def test_key_folds_case_and_tells_edns_size_do_and_transport_apart():
    a = wire.question_key(query("WEB.default.svc.cluster.local"), False)
    b = wire.question_key(query(), False)
    assert a.key == b.key and a.qend == b.qend
    keys = {wire.question_key(query(edns=e, do=d), tcp).key
            for e in (None, 1232, 4096) for d in (False, True) for tcp in (False, True)}
    assert len(keys) == 10  # without EDNS there is no DO bit to tell apart


def test_queries_the_template_path_does_not_take():
    assert wire.question_key(b"\x00" * 5, False) is None
    response = bytearray(query())
    response[2] |= 0x80
    assert wire.question_key(bytes(response), False) is None
    q = DNSRecord.question("a.b", "A")
    q.add_ar(EDNS0(version=1))
    assert wire.question_key(bytes(q.pack()), False) is None


def test_patch_puts_the_query_id_and_question_case_into_the_template():
    lower = query()
    parsed = DNSRecord.parse(lower)
    template = wire.encode(parsed, decide(ZONE, "web.default.svc.cluster.local", 1), False)
    upper = bytearray(query("WEB.Default.svc.cluster.local"))
    upper[0:2] = b"\xab\xcd"
    key = wire.question_key(bytes(upper), False)
    answer = DNSRecord.parse(wire.patch(template, bytes(upper), key.qend))
    assert answer.header.id == 0xABCD
    assert str(answer.rr[0].rname) == "WEB.Default.svc.cluster.local."  # compressed to it


def _big_zone_answer(edns):
    many = [o for o in objects()]
    svc = many[0].__class__("Service", "v1", "default", "wide", many[0].source,
                            {"spec": {"clusterIP": "None", "ports": [{"port": 80}]}})
    eps = many[0].__class__("Endpoints", "v1", "default", "wide", many[0].source,
                            {"subsets": [{"addresses": [{"ip": f"198.18.8.{i}"}
                                                        for i in range(1, 101)],
                                          "ports": [{"port": 80}]}]})
    zone = build_zone([svc, eps])
    q = DNSRecord.parse(query("wide.default.svc.cluster.local", edns=edns))
    decision = decide(zone, "wide.default.svc.cluster.local", 1)
    return q, decision


def test_udp_answers_fit_512_without_edns_1232_with_and_tcp_takes_all():
    q, decision = _big_zone_answer(None)
    udp = DNSRecord.parse(wire.encode(q, decision, False))
    assert udp.header.tc and not udp.rr
    assert len(DNSRecord.parse(wire.encode(q, decision, True)).rr) == 100
    q, decision = _big_zone_answer(4096)
    data = wire.encode(q, decision, False)
    assert len(data) <= wire.MAX_UDP_PAYLOAD
    truncated = DNSRecord.parse(data)
    assert truncated.header.tc and truncated.ar[0].rtype == wire.OPT  # OPT kept


def test_formerr_for_garbage_keeps_the_id():
    assert wire.header_error(b"\x12\x34\x01\x00" + b"\x00" * 8 + b"\xff", 1)[:4] == \
        b"\x12\x34\x81\x01"
    assert wire.header_error(b"\x12", 1) is None
