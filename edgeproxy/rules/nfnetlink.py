"""Two cheap nf_tables reads over netlink, for the periodic check of the nft-based backends.

Listing 20,000 rules with ``nft list table`` takes most of a second (nft rebuilds every rule
into its expression tree and prints it); ``iptables-nft-save`` a third of one. The check that
runs every second needs far less:

* `generation`: the nf_tables ruleset generation id (``NFT_MSG_GETGEN``, one message). The
  kernel bumps it on every committed change to any nf_tables table of the namespace, iptables-nft
  writes included; rule counters do not change it. Same id as when the rules were last found
  right means nothing at all was written since, so nothing needs reading.
* `chain_digests`: per chain, a SHA-256 of the raw ``NFT_MSG_NEWRULE`` messages of that chain
  of one table, as the kernel dumps them: chain name, handle, expressions, comment, with rule
  counters blanked. No parsing, no formatting; a rule deleted, added, replaced or reordered
  changes it. It cannot say what is right, only that nothing changed since a check that parsed
  the rules found them right.

The socket is opened in the namespace of the runner (tests and benchmarks run the backends in a
namespace of their own): the calling thread enters it (`edgeproxy.netns.entered`) just for
``socket()``; a netlink socket stays bound to the namespace it was created in. Every error
returns None and the caller falls back to its full check, so this module can only make a check
cheaper, never skip one wrongly.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import _socket
import socket
import struct
from typing import Iterable

from edgeproxy.netns import entered

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_GETCHAIN = 4
NFT_MSG_GETRULE = 7
NFT_MSG_GETGEN = 16
NFTA_RULE_TABLE = 1
NFTA_RULE_CHAIN = 2
NFTA_GEN_ID = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
NFPROTO = {4: 2, 6: 10}  # NFPROTO_IPV4, NFPROTO_IPV6
MAX_DUMP_BYTES = 64 << 20  # bound on one dump (20,000 of our rules are ~6 MB)
RECV_TIMEOUT = 5.0  # seconds; a dump of a large table arrives in well under one

_HDR = struct.Struct("=IHHII")  # nlmsghdr: len, type, flags, seq, pid
_NFGEN = struct.Struct("=BBH")  # nfgenmsg: family, version, res_id
_seq = 0


def _open(netns: str | None) -> "_socket.socket":
    """A netlink socket of the namespace ``netns``, from the C ``_socket`` module, which
    gevent's monkey-patching leaves alone: these reads run in a native thread of gevent's pool
    (backends/check.py `off_hub`), where a cooperative socket would need a hub of its own."""
    # setns affects the calling thread only, and only until the socket exists.
    with entered(netns):
        sock = _socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    try:
        sock.settimeout(RECV_TIMEOUT)
        sock.bind((0, 0))
    except OSError:
        sock.close()
        raise
    return sock


def _attr(kind: int, value: bytes) -> bytes:
    length = 4 + len(value)
    return struct.pack("=HH", length, kind) + value + b"\0" * (-length % 4)


def _request(sock: _socket.socket, msg: int, family: int, attrs: bytes, dump: bool) -> list[bytes]:
    """Payloads (after nlmsghdr + nfgenmsg) of the answer; OSError carries the kernel's errno."""
    global _seq
    _seq = (_seq + 1) & 0xFFFFFFFF
    seq = _seq
    body = _NFGEN.pack(family, 0, 0) + attrs
    flags = NLM_F_REQUEST | (NLM_F_DUMP if dump else 0)
    sock.send(_HDR.pack(_HDR.size + len(body), (NFNL_SUBSYS_NFTABLES << 8) | msg, flags, seq, 0)
              + body)
    out: list[bytes] = []
    total = 0
    while True:
        data = sock.recv(1 << 16)
        if not data:
            raise OSError(errno.EIO, "netlink socket closed")
        total += len(data)
        if total > MAX_DUMP_BYTES:
            raise OSError(errno.E2BIG, "netlink dump larger than expected")
        off = 0
        while off + _HDR.size <= len(data):
            length, kind, _flags, mseq, _pid = _HDR.unpack_from(data, off)
            if length < _HDR.size:
                raise OSError(errno.EPROTO, "malformed netlink message")
            if mseq == seq:
                if kind == NLMSG_DONE:
                    return out
                if kind == NLMSG_ERROR:
                    code = struct.unpack_from("=i", data, off + _HDR.size)[0]
                    if code:
                        raise OSError(-code, os.strerror(-code))
                    return out  # an ACK
                out.append(data[off + _HDR.size + _NFGEN.size:off + length])
                if not dump:
                    return out
            off += (length + 3) & ~3


def generation(netns: str | None = None) -> int | None:
    """The namespace's nf_tables generation id, None when it cannot be read."""
    try:
        sock = _open(netns)
        try:
            payloads = _request(sock, NFT_MSG_GETGEN, 0, b"", dump=False)
        finally:
            sock.close()
    except OSError:
        return None
    for payload in payloads:
        off = 0
        while off + 4 <= len(payload):
            length, kind = struct.unpack_from("=HH", payload, off)
            if length < 4:
                break
            if kind & 0x3FFF == NFTA_GEN_ID and length >= 8:
                return struct.unpack_from(">I", payload, off + 4)[0]
            off += (length + 3) & ~3
    return None


# iptables-nft puts a counter expression in every rule; its packet and byte counts change with
# traffic, so they are blanked before hashing (list element "counter", data: two u64 attributes).
_COUNTER = re.compile(rb"counter\x00\x1c\x00\x02[\x00\x80]\x0c\x00\x01\x00.{8}\x0c\x00\x02\x00.{8}",
                      re.DOTALL)


def chain_digests(family: int, table: str, chains: Iterable[str],
                  netns: str | None = None) -> dict[str, str] | None:
    """SHA-256 per chain over the kernel's rule messages of that chain of ``table``, rule
    counters blanked; "absent" for a chain (or table) that does not exist; None when netlink
    cannot be used. One dump per chain is cheaper than one of the table, whose dump restarts
    its walk for every 32 KiB message batch."""
    try:
        sock = _open(netns)
    except OSError:
        return None
    result: dict[str, str] = {}
    base = _attr(NFTA_RULE_TABLE, table.encode() + b"\0")
    try:
        for chain in chains:
            # NFTA_CHAIN_TABLE/NFTA_CHAIN_NAME are attributes 1 and 3, NFTA_RULE_* 1 and 2.
            name = chain.encode() + b"\0"
            try:
                # A rule dump of a missing chain is just empty, like that of an empty chain:
                # ask for the chain itself first (one message, ENOENT when it is gone).
                _request(sock, NFT_MSG_GETCHAIN, NFPROTO[family], base + _attr(3, name),
                         dump=False)
                payloads = _request(sock, NFT_MSG_GETRULE, NFPROTO[family],
                                    base + _attr(NFTA_RULE_CHAIN, name), dump=True)
            except OSError as exc:  # the kernel's ENOENT: no such table or chain
                if exc.errno != errno.ENOENT:
                    return None
                result[chain] = "absent"
                continue
            result[chain] = _hash(payloads)
    finally:
        sock.close()
    return result


def _hash(payloads: list[bytes]) -> str:
    blob = b"".join(struct.pack("=I", len(p)) + p for p in payloads)
    if b"counter\x00" in blob:
        blob = _COUNTER.sub(b"counter\x00", blob)
    return hashlib.sha256(blob).hexdigest()
