"""DNS wire format: the question key of a raw query, answer templates, and encoding (pure).

The fast path. Most queries are the same few names asked again and again; their answers do
not change until the zone does (a cluster name) or the next second (a cached forwarded name,
whose TTLs count down). So the server keeps each answer it encoded as a *template* under the
query's `question_key` (flags, lowercased name, type, class, EDNS0 payload size and DO bit,
transport), and answers a repeated query with `patch`: the query's ID and question bytes
spliced into the template. Names in a template's records that equal the question are
compressed to a pointer to it (offset 12), so they come out in the case the client asked
(0x20 case randomisation keeps working). Queries the key does not cover (an EDNS0 version
other than 0, a compressed question, several questions, opcode not QUERY) take the full path.

The full path parses with dnslib (chosen by measurement, docs/dns.md) and encodes here:
`encode` turns an `answer.Decision` into a message, `relay` re-encodes a cached upstream
answer with its TTLs counted down, `error` answers FORMERR/SERVFAIL/NOTIMP/REFUSED. All of
them honour the size a message may have: 512 bytes over UDP without EDNS0, the client's EDNS0
payload size capped at `MAX_UDP_PAYLOAD` (1232, the DNS flag day 2020 value, so no answer is
fragmented) with EDNS0, 65535 over TCP; a message too large for UDP goes out truncated (TC,
question and OPT only), and the client asks again over TCP.
"""

from __future__ import annotations

from typing import Iterable, NamedTuple

from dnslib import (AAAA as AAAA_RDATA, CNAME as CNAME_RDATA, DNSHeader, DNSLabel,
                    DNSQuestion, DNSRecord, EDNS0, NS as NS_RDATA, PTR as PTR_RDATA, RR,
                    SOA as SOA_RDATA, SRV as SRV_RDATA, TXT as TXT_RDATA, A as A_RDATA)

from .answer import Decision, Record
from .records import A, AAAA, CNAME, NS, PTR, SOA, SRV, TXT

MAX_UDP_PAYLOAD = 1232  # what we advertise and the most we send over UDP
PLAIN_UDP_LIMIT = 512  # RFC 1035, a client without EDNS0
TCP_LIMIT = 65535
OPT = 41
BADVERS = 16  # EDNS's extended RCODE (RFC 6891)


class Key(NamedTuple):
    key: bytes  # the template key
    qend: int  # offset just after the question's class


def question_key(data: bytes, tcp: bool) -> Key | None:
    """The template key of a plain query (one question, no answer/authority records, at
    most an EDNS0 version 0 OPT record), or None: take the full path."""
    n = len(data)
    if n < 17 or data[2] & 0xFA or data[4:10] != b"\x00\x01\x00\x00\x00\x00":
        return None  # a response, an opcode other than QUERY, TC set, not one question
    pos = 12
    try:
        length = data[pos]
        while length:
            if length > 63:
                return None  # a pointer in the question: legal, rare, the full path's
            pos += length + 1
            length = data[pos]
    except IndexError:
        return None
    qend = pos + 5
    additional = data[10:12]
    if additional == b"\x00\x00":
        if qend != n:
            return None
        edns = b"-"
    elif additional == b"\x00\x01":
        opt = qend
        if (n < opt + 11 or data[opt] != 0 or data[opt + 1:opt + 3] != b"\x00\x29"
                or data[opt + 5] or data[opt + 6]):
            return None  # not an OPT, or an extended rcode / EDNS version: the full path
        if opt + 11 + int.from_bytes(data[opt + 9:opt + 11], "big") != n:
            return None
        # Options (a client cookie, padding) do not change our answer: ignored.
        edns = data[opt + 3:opt + 5] + (b"D" if data[opt + 7] & 0x80 else b"d")
    else:
        return None
    if qend > n:
        return None
    # Folding ASCII letters is DNS's case-insensitivity; label lengths (< 64) never fold.
    key = data[2:4] + data[12:qend - 4].lower() + data[qend - 4:qend] + edns + (
        b"T" if tcp else b"U")
    return Key(key, qend)


def patch(template: bytes, query: bytes, qend: int) -> bytes:
    """The template answer with the query's ID and question (same length: same key)."""
    return query[:2] + template[2:12] + query[12:qend] + template[qend:]


def size_limit(query: DNSRecord, tcp: bool) -> int:
    if tcp:
        return TCP_LIMIT
    opt = edns_of(query)
    if opt is None:
        return PLAIN_UDP_LIMIT
    return max(PLAIN_UDP_LIMIT, min(opt.rclass, MAX_UDP_PAYLOAD))


def edns_of(record: DNSRecord) -> RR | None:
    return next((rr for rr in record.ar if rr.rtype == OPT), None)


def _do_bit(opt: RR | None) -> bool:
    return bool(opt is not None and opt.ttl & 0x8000)


def _rdata(rtype: int, value: object):
    if rtype == A:
        return A_RDATA(value)
    if rtype == AAAA:
        return AAAA_RDATA(value)
    if rtype == CNAME:
        return CNAME_RDATA(value + ".")
    if rtype == PTR:
        return PTR_RDATA(value + ".")
    if rtype == NS:
        return NS_RDATA(value + ".")
    if rtype == TXT:
        return TXT_RDATA(value)
    if rtype == SRV:
        priority, weight, port, target = value  # type: ignore[misc]
        return SRV_RDATA(priority, weight, port, target + ".")
    if rtype == SOA:
        mname, rname, serial, refresh, retry, expire, minimum = value  # type: ignore[misc]
        return SOA_RDATA(mname + ".", rname + ".", (serial, refresh, retry, expire, minimum))
    raise ValueError(f"no rdata for type {rtype}")


def _rrs(records: Iterable[Record], qname: DNSLabel, lowered: str) -> list[RR]:
    # The owner that is the question is written as the question is, so it compresses to it.
    return [RR(qname if owner == lowered else owner + ".", rtype, 1, ttl, _rdata(rtype, rdata))
            for owner, rtype, ttl, rdata in records]


def _header(query: DNSRecord, rcode: int, authoritative: bool) -> DNSHeader:
    h = query.header
    return DNSHeader(id=h.id, qr=1, aa=int(authoritative), rd=h.rd, ra=1, rcode=rcode & 0xF)


def _opt_for(query: DNSRecord, rcode: int = 0) -> RR | None:
    opt = edns_of(query)
    if opt is None:
        return None
    return EDNS0(udp_len=MAX_UDP_PAYLOAD, ext_rcode=rcode >> 4,
                 flags="do" if _do_bit(opt) else "")


def _pack(message: DNSRecord, query: DNSRecord, limit: int) -> bytes:
    data = message.pack()
    if len(data) <= limit:
        return data
    short = DNSRecord(DNSHeader(id=message.header.id, qr=1, aa=message.header.aa, tc=1,
                                rd=message.header.rd, ra=1, rcode=message.header.rcode),
                      q=query.q)
    opt = [rr for rr in message.ar if rr.rtype == OPT]
    if opt:
        short.add_ar(opt[0])
    return short.pack()


def encode(query: DNSRecord, decision: Decision, tcp: bool,
           extra_answers: Iterable[RR] = (), rcode: int | None = None) -> bytes:
    """The response to ``query`` that ``decision`` says (``extra_answers``: what resolving a
    CNAME target upstream added)."""
    qname = query.q.qname
    lowered = str(qname).lower().rstrip(".")
    code = decision.rcode if rcode is None else rcode
    message = DNSRecord(_header(query, code, decision.authoritative), q=query.q)
    for rr in _rrs(decision.answer, qname, lowered):
        message.add_answer(rr)
    for rr in extra_answers:
        message.add_answer(rr)
    for rr in _rrs(decision.authority, qname, lowered):
        message.add_auth(rr)
    for rr in _rrs(decision.additional, qname, lowered):
        message.add_ar(rr)
    opt = _opt_for(query)
    if opt is not None:
        message.add_ar(opt)
    return _pack(message, query, size_limit(query, tcp))


def error(query: DNSRecord, rcode: int, tcp: bool) -> bytes:
    """A response carrying only ``rcode`` (and OPT for an EDNS0 client)."""
    message = DNSRecord(_header(query, rcode, False), q=query.q)
    opt = _opt_for(query, rcode)
    if opt is not None:
        message.add_ar(opt)
    return _pack(message, query, size_limit(query, tcp))


def header_error(data: bytes, rcode: int) -> bytes | None:
    """FORMERR for a message dnslib cannot parse: its ID, flags of a response, no sections
    (None when not even a header is there, or it is itself a response: drop it)."""
    if len(data) < 12 or data[2] & 0x80:
        return None
    return data[:2] + bytes([0x80 | (data[2] & 0x79), rcode & 0xF]) + b"\x00" * 8


def relay(query: DNSRecord, upstream: DNSRecord, age: int, tcp: bool,
          ttl: int | None = None) -> bytes:
    """A cached upstream answer re-encoded for ``query``: its ID and question, every TTL
    counted down by ``age`` seconds (or set to ``ttl``: a stale answer), our own OPT."""
    message = DNSRecord(DNSHeader(id=query.header.id, qr=1, aa=0, rd=query.header.rd, ra=1,
                                  rcode=upstream.header.rcode, ad=upstream.header.ad),
                        q=query.q)
    lowered = str(query.q.qname).lower()

    def copy(rr: RR) -> RR:
        new_ttl = ttl if ttl is not None else max(0, rr.ttl - age)
        name = query.q.qname if str(rr.rname).lower() == lowered else rr.rname
        return RR(name, rr.rtype, rr.rclass, new_ttl, rr.rdata)

    for rr in upstream.rr:
        message.add_answer(copy(rr))
    for rr in upstream.auth:
        message.add_auth(copy(rr))
    for rr in upstream.ar:
        if rr.rtype != OPT:
            message.add_ar(copy(rr))
    opt = _opt_for(query)
    if opt is not None:
        message.add_ar(opt)
    return _pack(message, query, size_limit(query, tcp))


def upstream_query(qname: DNSLabel, qtype: int, qclass: int, do: bool, cd: bool,
                   qid: int) -> DNSRecord:
    """What we ask an upstream: the client's question, RD, its DO/CD bits, our payload size
    (not the client's own options: an answer is shared by every client that asks)."""
    message = DNSRecord(DNSHeader(id=qid, rd=1), q=DNSQuestion(qname, qtype, qclass))
    message.header.cd = int(cd)
    message.add_ar(EDNS0(udp_len=MAX_UDP_PAYLOAD, flags="do" if do else ""))
    return message


def cache_key_flags(query: DNSRecord) -> tuple[bool, bool]:
    """(DO, CD) of a query: answers differ by them, so they are part of the cache key."""
    return _do_bit(edns_of(query)), bool(query.header.cd)
