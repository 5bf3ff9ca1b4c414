"""Parse one manifest file into documents, the way kubectl reads it (not the way PyYAML does).

Owns bytes -> list of plain mappings, with every file-level and document-level error named.
Differences from ``yaml.safe_load_all``, each matching kubectl / the API server:

* timestamps stay strings (``creationTimestamp: 2024-05-01T10:20:30Z``);
* a duplicate mapping key is an error (PyYAML silently keeps the last one);
* aliases are bounded: the composed node graph is walked once, memoized per node, to count what
  the aliases would expand to; a document whose aliases add more than
  ``LoadLimits.max_alias_expansion`` nodes (a "billion laughs") or that is recursive is refused
  before anything walks the expanded data, so the bomb costs a few microseconds;
* size caps per file and per document (per item of a ``kind: List``);
* invalid UTF-8 rejects the file; a top-level scalar or sequence is a document error.

A YAML error (scanner, parser, composer, constructor) rejects the whole file: a half-parsed file
is most likely half-written. Everything else stays per document, so one bad document does not
drop its neighbours. Document indexes count non-null documents from 0 (``---`` followed by
nothing is skipped), and ``kind: List`` items are addressed ``D/items/J``.

The parser is libyaml (``yaml.CSafeLoader``): the pure-Python loader is ~10x slower.
"""

from __future__ import annotations

import json
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


def _parse_yaml(text: str, may_alias: bool, limits: LoadLimits, out: ParsedFile) -> None:
    loader = KubeYamlLoader(text)
    pending: list[tuple[str, Any, int, Node | None]] = []
    doc_errors: list[tuple[str | None, str, str]] = []
    index = 0
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
            pending.append((doc, value, _node_bytes(node), node))
    except yaml.YAMLError as exc:
        out.errors.append((None, "", f"YAML error: {_yaml_error(exc)}"))
        return
    except RecursionError:
        out.errors.append((None, "", "YAML nested too deeply"))
        return
    finally:
        loader.dispose()
    out.errors.extend(doc_errors)
    for doc, value, size, node in pending:
        _add_document(out, doc, value, size, node, limits)


def _add_document(out: ParsedFile, doc: str, value: Any, size: int, node: Node | None,
                  limits: LoadLimits) -> None:
    if not isinstance(value, dict):
        what = "sequence" if isinstance(value, list) else "scalar"
        out.errors.append((doc, "", f"top-level {what}: a manifest document must be a mapping"))
        return
    if value.get("kind") == "List" and isinstance(value.get("items"), list):
        item_nodes = _item_nodes(node)
        for j, item in enumerate(value["items"]):
            item_doc = f"{doc}/items/{j}"
            if not isinstance(item, dict):
                out.errors.append((item_doc, "", "a kind: List item must be a mapping"))
                continue
            item_size = _node_bytes(item_nodes[j]) if item_nodes is not None else 0
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
