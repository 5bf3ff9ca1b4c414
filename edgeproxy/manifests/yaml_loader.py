"""Parse one manifest file into documents, the way kubectl reads it (not the way PyYAML does).

Owns bytes -> list of plain mappings, with every file-level and document-level error named.
Differences from ``yaml.safe_load_all``, each matching kubectl / the API server:

* timestamps stay strings (``creationTimestamp: 2024-05-01T10:20:30Z``);
* a duplicate mapping key is an error (PyYAML silently keeps the last one);
* aliases are bounded: the composed node graph is walked once, memoized per node, to count what
  the aliases would expand to; a document whose aliases add more than
  ``LoadLimits.max_alias_expansion`` nodes (a "billion laughs") or that is recursive is refused
  before anything walks the expanded data, so the bomb costs a few microseconds;
* size caps per file and per document (per item of a ``kind: List``), and a budget of YAML
  nodes per document and per file, all checked *before* composing: the stream is cut into
  documents at ``---`` lines, as kubectl's YAMLReader does, and each piece's size and node
  count (estimated from its bytes: every node needs a line, a ``,`` or a ``: ``) are checked
  first, so a 60 MiB one-document file is refused in milliseconds instead of composing
  gigabytes of nodes; composed nodes are dropped as soon as their document is constructed;
* invalid UTF-8 rejects the file; a top-level scalar or sequence is a document error.

A YAML error (scanner, parser, composer, constructor) rejects the whole file: a half-parsed file
is most likely half-written. Everything else stays per document, so one bad document does not
drop its neighbours. Document indexes count non-null documents from 0 (``---`` followed by
nothing is skipped), and ``kind: List`` items are addressed ``D/items/J``.

The parser is libyaml (``yaml.CSafeLoader``): the pure-Python loader is ~10x slower.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from edgeproxy.model import LoadLimits

_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"
_MERGE_TAG = "tag:yaml.org,2002:merge"


class KubeYamlLoader(yaml.CSafeLoader):
    """libyaml parser + safe constructor, with kubectl's reading of timestamps and keys."""

    # A class-level copy without the timestamp resolver: plain scalars that look like dates are
    # resolved as strings (the parent's table is left untouched for other users of PyYAML).
    yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != _TIMESTAMP_TAG]
        for first, resolvers in yaml.CSafeLoader.yaml_implicit_resolvers.items()
    }

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict:  # type: ignore[override]
        if not isinstance(node, MappingNode):
            raise ConstructorError(None, None, f"expected a mapping node, but found {node.id}",
                                   node.start_mark)
        own = len(node.value) - sum(1 for k, _ in node.value if k.tag == _MERGE_TAG)
        self.flatten_mapping(node)  # ``<<`` merge keys, as go-yaml supports them
        merged = len(node.value) - own  # merged pairs come first; own keys override them
        mapping: dict = {}
        own_keys: set = set()
        for index, (key_node, value_node) in enumerate(node.value):
            key = self.construct_object(key_node, deep=deep)
            try:
                hash(key)
            except TypeError:
                raise ConstructorError("while constructing a mapping", node.start_mark,
                                       "found unhashable key", key_node.start_mark) from None
            if index >= merged:
                if key in own_keys:
                    raise ConstructorError("while constructing a mapping", node.start_mark,
                                           f"found duplicate key {key!r}", key_node.start_mark)
                own_keys.add(key)
            mapping[key] = self.construct_object(value_node, deep=deep)
        return mapping


# An explicit ``!!timestamp`` tag is read as a string too.
KubeYamlLoader.add_constructor(_TIMESTAMP_TAG, yaml.constructor.SafeConstructor.construct_yaml_str)


@dataclass
class ParsedFile:
    """Documents of one file: (document index, mapping) pairs and per-document errors."""

    documents: list[tuple[str, dict]] = field(default_factory=list)
    # (document index, field path, message); document None = the whole file was rejected.
    errors: list[tuple[str | None, str, str]] = field(default_factory=list)

    @property
    def rejected(self) -> bool:
        return any(doc is None for doc, _, _ in self.errors)


def _expanded_size(root: Node) -> tuple[int, int]:
    """(distinct nodes, nodes after alias expansion), memoized per node; ValueError on a cycle.

    Iterative (no recursion limit) and linear in the distinct nodes, whatever the expansion.
    """
    sizes: dict[int, int] = {}
    in_progress: set[int] = set()
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        nid = id(node)
        if done:
            if isinstance(node, SequenceNode):
                children = node.value
            else:
                children = [n for pair in node.value for n in pair]
            sizes[nid] = 1 + sum(sizes[id(c)] for c in children)
            in_progress.discard(nid)
            continue
        if nid in sizes:
            continue
        if isinstance(node, ScalarNode):
            sizes[nid] = 1
            continue
        if nid in in_progress:
            raise ValueError("recursive alias")
        in_progress.add(nid)
        stack.append((node, True))
        children = node.value if isinstance(node, SequenceNode) else [n for p in node.value for n in p]
        for child in children:
            cid = id(child)
            if cid in in_progress:
                raise ValueError("recursive alias")
            if cid not in sizes:
                stack.append((child, False))
    return len(sizes), sizes[id(root)]


def _node_bytes(node: Node) -> int:
    return node.end_mark.index - node.start_mark.index


def _yaml_error(exc: yaml.YAMLError) -> str:
    # PyYAML's str() spans several lines; one line reads better in a table of errors.
    return " ".join(str(exc).split())


def parse_bytes(data: bytes, filename: str, limits: LoadLimits | None = None) -> ParsedFile:
    """Parse a manifest file's bytes (YAML stream or JSON, chosen by the file name)."""
    limits = limits or LoadLimits()
    out = ParsedFile()
    if len(data) > limits.max_file_bytes:
        out.errors.append((None, "", f"file is {len(data)} bytes, over the {limits.max_file_bytes}"
                                     "-byte limit"))
        return out
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        out.errors.append((None, "", f"invalid UTF-8 at byte {exc.start}"))
        return out
    if filename.endswith(".json"):
        _parse_json(text, limits, out)
    else:
        _parse_yaml(text, bool("*" in text), limits, out)
    return out


def _check_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    result: dict = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _parse_json(text: str, limits: LoadLimits, out: ParsedFile) -> None:
    try:
        value = json.loads(text, object_pairs_hook=_check_duplicates)
    except RecursionError:
        out.errors.append((None, "", "JSON nested too deeply"))
        return
    except ValueError as exc:  # JSONDecodeError or a duplicate key
        out.errors.append((None, "", f"invalid JSON: {exc}"))
        return
    _add_document(out, "0", value, len(text.encode()), None, limits)


_SEPARATOR = re.compile(rb"^---[ \t]*(?:#[^\n]*)?\r?$", re.M)
_LIST_KIND = re.compile(rb"^kind:[ \t]*[\"']?List[\"']?[ \t]*(?:#[^\n]*)?\r?$", re.M)


def estimated_nodes(data: bytes) -> int:
    """An upper estimate of the YAML nodes in ``data``: every scalar or collection needs its own
    line, a flow ``,`` or a ``: `` (C-speed counts, ~1 ms per MiB)."""
    return data.count(b"\n") + data.count(b",") + data.count(b": ") + 1


def split_documents(text: str) -> list[tuple[int, str]]:
    """(first line number, text) of each piece between ``---`` separator lines (kubectl's
    YAMLReader rule: ``---`` at the start of a line followed by nothing but blanks or a
    comment). A separator with content after it (``--- !!map``) is left to the parser."""
    data = text.encode()
    pieces: list[tuple[int, str]] = []
    start = 0
    line = 0
    for match in _SEPARATOR.finditer(data):
        piece = data[start:match.start()]
        pieces.append((line, piece.decode()))
        line += piece.count(b"\n") + 1
        start = match.end() + 1
    pieces.append((line, data[start:].decode()))
    return pieces


def _parse_yaml(text: str, may_alias: bool, limits: LoadLimits, out: ParsedFile) -> None:
    estimate = estimated_nodes(text.encode())
    if estimate > limits.max_file_nodes:
        out.errors.append((None, "", f"about {estimate} YAML nodes, over the "
                                     f"{limits.max_file_nodes}-node limit: refused unparsed"))
        return
    index = 0
    parsed: list[tuple[str, Any, int, list[int] | None]] = []
    doc_errors: list[tuple[str | None, str, str]] = []
    for first_line, piece in split_documents(text):
        raw = piece.encode()
        if not raw.strip():
            continue
        if len(raw) > limits.max_document_bytes and not _LIST_KIND.search(raw):
            # Over the limit whatever it contains (only List items are measured one by one):
            # refused without composing it.
            doc = str(index)
            index += 1
            doc_errors.append((doc, "", f"document is {len(raw)} bytes, over the "
                                        f"{limits.max_document_bytes}-byte limit"))
            continue
        nodes = estimated_nodes(raw)
        if nodes > limits.max_document_nodes:
            doc = str(index)
            index += 1
            doc_errors.append((doc, "", f"about {nodes} YAML nodes, over the "
                                        f"{limits.max_document_nodes}-node limit"))
            continue
        try:
            index = _parse_piece(piece, may_alias, limits, index, parsed, doc_errors)
        except yaml.YAMLError as exc:
            _shift_marks(exc, first_line)
            out.errors.append((None, "", f"YAML error: {_yaml_error(exc)}"))
            return
        except RecursionError:
            out.errors.append((None, "", "YAML nested too deeply"))
            return
    out.errors.extend(doc_errors)
    for doc, value, size, item_sizes in parsed:
        _add_document(out, doc, value, size, item_sizes, limits)


def _parse_piece(piece: str, may_alias: bool, limits: LoadLimits, index: int,
                 parsed: list, doc_errors: list) -> int:
    """Compose and construct the documents of one piece; returns the next document index."""
    loader = KubeYamlLoader(piece)
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            if node.tag == "tag:yaml.org,2002:null" and isinstance(node, ScalarNode):
                continue  # an empty document, skipped like safe_load_all's None
            doc = str(index)
            index += 1
            if may_alias:  # no ``*`` in the text means no alias: skip the walk entirely
                try:
                    distinct, expanded = _expanded_size(node)
                except ValueError as exc:
                    doc_errors.append((doc, "", f"{exc}: refused"))
                    continue
                if expanded - distinct > limits.max_alias_expansion:
                    doc_errors.append((doc, "", f"aliases expand to {expanded} nodes (more than "
                                                f"{limits.max_alias_expansion} beyond the "
                                                f"{distinct} written): refused"))
                    continue
            value = loader.construct_document(node)
            item_nodes = _item_nodes(node)
            item_sizes = None if item_nodes is None else [_node_bytes(n) for n in item_nodes]
            # Only sizes are kept: the node graph (most of the memory) goes now.
            parsed.append((doc, value, _node_bytes(node), item_sizes))
            del node, item_nodes
    finally:
        loader.dispose()
    return index


def _shift_marks(exc: yaml.YAMLError, lines: int) -> None:
    """Make a piece's line numbers the file's (PyYAML prints mark.line + 1)."""
    if not lines:
        return
    for attr in ("context_mark", "problem_mark"):
        mark = getattr(exc, attr, None)
        if mark is not None:  # libyaml's marks are read-only: replace them
            setattr(exc, attr, yaml.error.Mark(mark.name, mark.index, mark.line + lines,
                                               mark.column, None, None))


def _add_document(out: ParsedFile, doc: str, value: Any, size: int,
                  item_sizes: list[int] | None, limits: LoadLimits) -> None:
    if not isinstance(value, dict):
        what = "sequence" if isinstance(value, list) else "scalar"
        out.errors.append((doc, "", f"top-level {what}: a manifest document must be a mapping"))
        return
    if value.get("kind") == "List" and isinstance(value.get("items"), list):
        for j, item in enumerate(value["items"]):
            item_doc = f"{doc}/items/{j}"
            if not isinstance(item, dict):
                out.errors.append((item_doc, "", "a kind: List item must be a mapping"))
                continue
            item_size = item_sizes[j] if item_sizes is not None and j < len(item_sizes) else 0
            if item_size > limits.max_document_bytes:
                out.errors.append((item_doc, "", f"object is {item_size} bytes, over the "
                                                 f"{limits.max_document_bytes}-byte limit"))
                continue
            out.documents.append((item_doc, item))
        return
    if size > limits.max_document_bytes:
        out.errors.append((doc, "", f"document is {size} bytes, over the "
                                    f"{limits.max_document_bytes}-byte limit"))
        return
    out.documents.append((doc, value))


def _item_nodes(node: Node | None) -> list[Node] | None:
    if not isinstance(node, MappingNode):
        return None
    for key, value in node.value:
        if isinstance(key, ScalarNode) and key.value == "items" and isinstance(value, SequenceNode):
            return value.value
    return None
