"""The loader reads YAML like kubectl: strings for timestamps, errors for duplicates, bounded
aliases, size caps, per-document errors, whole-file rejection on YAML errors."""

from __future__ import annotations

import time

from edgeproxy.manifests.yaml_loader import parse_bytes
from edgeproxy.model import LoadLimits


def docs(text: str, name: str = "f.yaml", limits: LoadLimits | None = None):
    return parse_bytes(text.encode(), name, limits)


def test_timestamps_stay_strings() -> None:
    parsed = docs("a: 2024-05-01T10:20:30Z\nb: 2024-05-01\nc: !!timestamp 2001-12-14\n")
    assert parsed.documents == [("0", {"a": "2024-05-01T10:20:30Z", "b": "2024-05-01",
                                       "c": "2001-12-14"})]


def test_duplicate_key_rejects_the_file() -> None:
    parsed = docs("kind: Service\n---\nmetadata:\n  name: a\n  name: b\n")
    assert parsed.documents == []
    assert parsed.rejected and "duplicate key 'name'" in parsed.errors[0][2]


def test_merge_keys_are_not_duplicates() -> None:
    parsed = docs("base: &b {x: 1, y: 2}\nm:\n  <<: *b\n  y: 3\n")
    assert parsed.documents[0][1]["m"] == {"x": 1, "y": 3}


def test_alias_bomb_is_refused_in_constant_time() -> None:
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 12):  # 10^12 nodes when expanded
        levels.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    text = "\n".join(levels) + "\n---\nkind: Fine\n"
    start = time.monotonic()
    parsed = docs(text)
    assert time.monotonic() - start < 1.0
    assert parsed.errors[0][0] == "0" and "aliases expand to" in parsed.errors[0][2]
    assert parsed.documents == [("1", {"kind": "Fine"})]  # the neighbour stands


def test_small_alias_use_is_fine_and_recursion_refused() -> None:
    assert docs("a: &x {p: 1}\nb: *x\n").documents[0][1]["b"] == {"p": 1}
    parsed = docs("a: &x [*x]\n")
    assert parsed.documents == [] and "recursive alias" in parsed.errors[0][2]


def test_document_indexes_skip_empty_documents_and_end_markers() -> None:
    text = "# comment only\n---\na: 1\n...\n---\n---\nb: 2\n---\n"
    parsed = docs(text)
    assert parsed.documents == [("0", {"a": 1}), ("1", {"b": 2})]


def test_top_level_scalar_and_sequence_are_document_errors() -> None:
    parsed = docs("just a string\n---\n- 1\n---\nkind: X\n")
    assert [(d, m.split(":")[0]) for d, _, m in parsed.errors] == [
        ("0", "top-level scalar"), ("1", "top-level sequence")]
    assert parsed.documents == [("2", {"kind": "X"})]


def test_list_items_are_documents() -> None:
    parsed = docs("kind: Pod\n---\nkind: List\nitems:\n- {kind: A}\n- 7\n- {kind: B}\n")
    assert parsed.documents == [("0", {"kind": "Pod"}), ("1/items/0", {"kind": "A"}),
                                ("1/items/2", {"kind": "B"})]
    assert parsed.errors == [("1/items/1", "", "a kind: List item must be a mapping")]


def test_syntax_error_rejects_whole_file_even_after_valid_documents() -> None:
    parsed = docs("kind: A\n---\nkind: B\n---\nspec:\n  clusterIP: %{CLUSTER_DNS}%\n")
    assert parsed.documents == [] and parsed.rejected
    assert parsed.errors[0][2].startswith("YAML error:")
    assert "\n" not in parsed.errors[0][2]


def test_unhashable_key_rejects_file() -> None:
    assert docs("cell: {{cell}}\n").rejected


def test_invalid_utf8() -> None:
    parsed = parse_bytes(b"kind: A\nname: \xff\xfe\n", "f.yaml")
    assert parsed.rejected and "invalid UTF-8 at byte 14" in parsed.errors[0][2]


def test_size_caps() -> None:
    limits = LoadLimits(max_document_bytes=100, max_file_bytes=1000)
    big = "a: " + "x" * 200 + "\n"
    parsed = docs(f"{big}---\nb: 1\n", limits=limits)
    assert parsed.errors[0][0] == "0" and "over the 100-byte limit" in parsed.errors[0][2]
    assert parsed.documents == [("1", {"b": 1})]
    # A kind: List is a container: the cap applies to each item, not the whole list.
    items = "".join(f"- {{kind: A, n: {i}}}\n" for i in range(20))
    parsed = docs("kind: List\nitems:\n" + items + f"- {{kind: B, v: {'y' * 150}}}\n",
                  limits=limits)
    assert len(parsed.documents) == 20
    assert [e[0] for e in parsed.errors] == ["0/items/20"]
    parsed = docs("a: " + "x" * 2000 + "\n", limits=limits)
    assert parsed.rejected and "over the 1000-byte limit" in parsed.errors[0][2]


def test_json_files() -> None:
    assert parse_bytes(b'{"kind": "Service", "a": [1]}', "s.json").documents == [
        ("0", {"kind": "Service", "a": [1]})]
    dup = parse_bytes(b'{"kind": "A", "kind": "B"}', "s.json")
    assert dup.rejected and "duplicate key 'kind'" in dup.errors[0][2]
    assert parse_bytes(b'{"kind": "A",}', "s.json").rejected
    assert parse_bytes(b"[1, 2]", "s.json").errors[0][2].startswith("top-level sequence")


def test_flow_style_yaml_with_trailing_commas() -> None:
    parsed = docs("{apiVersion: v1, kind: Service, spec: {ports: [{port: 80},],},}\n")
    assert parsed.documents[0][1]["spec"]["ports"] == [{"port": 80}]


def test_a_huge_document_is_refused_before_it_is_composed() -> None:
    """A ConfigMap with a 10-million-item list (60 MiB, under the file cap): refused from its
    bytes, in well under a second, instead of composing gigabytes of nodes."""
    import resource

    data = (b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndata:\n  items:\n"
            + b"  - 1\n" * 10_000_000)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    out = parse_bytes(data, "cm.yaml")
    assert time.perf_counter() - started < 2.0
    assert out.documents == [] and out.rejected
    assert "node limit" in out.errors[0][2]
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) >> 10
    assert grown_mb < 200, grown_mb  # about two copies of the text, no node graph


def test_an_oversized_document_among_good_ones_is_refused_alone() -> None:
    limits = LoadLimits(max_document_bytes=200)
    big = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: big}\ndata:\n" + \
        "".join(f"  k{i}: v\n" for i in range(50))
    text = f"apiVersion: v1\nkind: Service\nmetadata: {{name: a}}\n---\n{big}---\n" \
           "apiVersion: v1\nkind: Service\nmetadata: {name: b}\n"
    out = parse_bytes(text.encode(), "x.yaml", limits)
    assert [d for d, _ in out.documents] == ["0", "2"]
    assert out.errors == [("1", "", f"document is {len(big)} bytes, over the 200-byte limit")]


def test_a_big_list_dump_is_still_read_item_by_item() -> None:
    items = "".join(f"- {{apiVersion: v1, kind: Service, metadata: {{name: s{i}}}}}\n"
                    for i in range(2000))
    text = f"apiVersion: v1\nkind: List\nitems:\n{items}"
    limits = LoadLimits(max_document_bytes=1000)  # the dump is bigger, each item is not
    out = parse_bytes(text.encode(), "dump.yaml", limits)
    assert len(out.documents) == 2000 and out.errors == []


def test_node_budget_per_document() -> None:
    text = "apiVersion: v1\nkind: List\nitems: [" + "1," * 5000 + "1]\n"
    out = parse_bytes(text.encode(), "x.yaml", LoadLimits(max_document_nodes=1000))
    assert out.errors and "1000-node limit" in out.errors[0][2]


def test_yaml_errors_after_a_separator_name_the_file_line() -> None:
    """Pieces are parsed one by one; the error still names the line of the file."""
    text = "a: 1\n---\nb: 2\n---\nc: [unclosed\n"
    out = parse_bytes(text.encode(), "x.yaml")
    assert out.rejected
    assert "line 5, column 4" in out.errors[0][2] and "line 6, column 1" in out.errors[0][2]
