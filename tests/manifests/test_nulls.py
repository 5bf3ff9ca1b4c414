"""A field set to null is unset, as the API server decodes it: every optional field of every
schema, set to null in an otherwise valid document, gives no error (Helm renders null often:
``targetPort: null``, ``selector: null``, ``labels: null``)."""

from __future__ import annotations

import copy
import json
from typing import Any, Iterator

import pytest

from edgeproxy.manifests.validation import KNOWN_KINDS, schemas_dir, validate_document

BASES: dict[str, dict] = {
    "Service": {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
                "spec": {"clusterIP": "198.19.0.10", "ports": [{"port": 80}]}},
    "Endpoints": {"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "web"},
                  "subsets": [{"addresses": [{"ip": "198.18.1.11"}], "ports": [{"port": 80}]}]},
    "EndpointSlice": {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                      "metadata": {"name": "web-1"}, "addressType": "IPv4",
                      "endpoints": [{"addresses": ["198.18.1.11"]}], "ports": [{"port": 80}]},
    "DestinationRule": {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
                        "metadata": {"name": "web"}, "spec": {"host": "web"}},
}
# Optional fields with an alternative the API server wants when they are unset: the test sets
# the alternative beside the null.
ALTERNATIVES = {
    ("Endpoints", "subsets.[].addresses"): ("subsets.[]", {"notReadyAddresses": [
        {"ip": "198.18.1.13"}]}),
    ("DestinationRule", "spec.trafficPolicy.loadBalancer.consistentHash.useSourceIp"): (
        "spec.trafficPolicy.loadBalancer.consistentHash", {"httpHeaderName": "x-user"}),
    ("DestinationRule", "spec.trafficPolicy.loadBalancer.consistentHash.httpHeaderName"): (
        "spec.trafficPolicy.loadBalancer.consistentHash", {"useSourceIp": True}),
}
# Values for required fields inside containers a path has to create.
SAMPLES = {"name": "a", "port": 80, "ip": "198.18.1.12", "addresses": ["198.18.1.12"]}


def _optional_paths(schema: dict, prefix: tuple = ()) -> Iterator[tuple]:
    """Every optional property path of ``schema`` ("[]" stands for a list item)."""
    required = set(schema.get("required", ()))
    for name, sub in (schema.get("properties") or {}).items():
        path = (*prefix, name)
        if name not in required:
            yield path
        yield from _walk(sub, path)


def _walk(schema: dict, path: tuple) -> Iterator[tuple]:
    if "properties" in schema:
        yield from _optional_paths(schema, path)
    if isinstance(schema.get("items"), dict):
        yield from _walk(schema["items"], (*path, "[]"))


def _container(schema_name: str, path: tuple) -> Any:
    """A minimal value for a container the path goes through (required fields sampled)."""
    return {key: SAMPLES[key] for key in SAMPLES if key in _required_at(schema_name, path)}


def _required_at(schema_name: str, path: tuple) -> set:
    node = json.loads((schemas_dir() / schema_name).read_text())
    for part in path:
        node = node["items"] if part == "[]" else node["properties"][part]
    return set(node.get("required", ()))


def _with_null(base: dict, schema_name: str, path: tuple) -> dict:
    doc = copy.deepcopy(base)
    node: Any = doc
    for i, part in enumerate(path[:-1]):
        upto = path[:i + 1]
        nxt = path[i + 1]
        if part == "[]":
            if not node:
                node.append(_container(schema_name, upto) if nxt != "[]" else [])
            node = node[0]
            continue
        if part not in node or not isinstance(node[part], (dict, list)):
            node[part] = [] if nxt == "[]" else _container(schema_name, upto)
        node = node[part]
    last = path[-1]
    if last == "[]":
        return doc  # a null list item is an error (as for the API server): not an optional field
    node[last] = None
    return doc


CASES = [(kind, path) for kind, (_, schema_name) in KNOWN_KINDS.items()
         for path in _optional_paths(json.loads((schemas_dir() / schema_name).read_text()))]


def test_the_walk_covers_the_fields_helm_writes_null():
    flat = {(kind, ".".join(p)) for kind, p in CASES}
    for field in [("Service", "spec.ports.[].targetPort"), ("Service", "spec.selector"),
                  ("Service", "metadata.labels"), ("Endpoints", "subsets.[].notReadyAddresses"),
                  ("EndpointSlice", "endpoints.[].conditions")]:
        assert field in flat, field
    assert len(CASES) > 60


@pytest.mark.parametrize("kind, path", CASES, ids=[f"{k}:{'.'.join(p)}" for k, p in CASES])
def test_an_optional_field_set_to_null_is_unset(kind, path):
    schema_name = KNOWN_KINDS[kind][1]
    doc = _with_null(BASES[kind], schema_name, path)
    alternative = ALTERNATIVES.get((kind, ".".join(path)))
    if alternative is not None:
        node: Any = doc
        for part in alternative[0].split("."):
            node = node[0] if part == "[]" else node[part]
        node.update(alternative[1])
    obj, errors = validate_document("null.yaml", "0", doc)
    assert errors == [], [str(e) for e in errors]
    node = obj.body
    for part in path[:-1]:
        node = node[0] if part == "[]" else node.get(part, {})
        if not node:
            return  # the container itself became empty and was kept: nothing more to see
    if isinstance(node, dict) and path[-1] != "[]":
        assert node.get(path[-1]) is None


def test_null_values_in_maps_of_strings_are_empty_strings():
    doc = copy.deepcopy(BASES["Service"])
    doc["metadata"]["labels"] = {"app": None}
    doc["spec"]["selector"] = {"app": None}
    obj, errors = validate_document("null.yaml", "0", doc)
    assert errors == []
    assert obj.body["metadata"]["labels"] == {"app": ""}
    assert obj.body["spec"]["selector"] == {"app": ""}


def test_a_null_list_item_is_still_an_error_worded_in_yaml():
    doc = copy.deepcopy(BASES["Service"])
    doc["spec"]["ports"] = [None]
    _, errors = validate_document("null.yaml", "0", doc)
    assert [(e.path, e.message) for e in errors] == [("spec.ports[0]",
                                                      "must be a mapping, got null")]


@pytest.mark.parametrize("doc, path, message", [
    ({"spec": {"ports": [{"port": True}]}}, "spec.ports[0].port", "must be an integer, got true"),
    ({"spec": {"sessionAffinity": False}}, "spec.sessionAffinity",
     'must be one of "None", "ClientIP", got false'),
    ({"spec": {"clusterIPs": "198.19.0.10"}}, "spec.clusterIPs",
     'must be a list, got "198.19.0.10"'),
])
def test_messages_speak_yaml_not_python(doc, path, message):
    body = copy.deepcopy(BASES["Service"])
    for key, value in doc["spec"].items():
        body["spec"][key] = value
    _, errors = validate_document("x.yaml", "0", body)
    assert (path, message) in [(e.path, e.message) for e in errors], [str(e) for e in errors]
    for e in errors:
        assert "None" not in e.message.replace('"None"', "") and "True" not in e.message


@pytest.mark.parametrize("kind, right", [("SERVICE", "Service"), ("endpointslice", "EndpointSlice"),
                                         ("endpoints", "Endpoints")])
def test_a_kind_spelled_in_another_case_is_an_error_naming_the_right_one(kind, right):
    body = copy.deepcopy(BASES[right])
    body["kind"] = kind
    obj, errors = validate_document("x.yaml", "0", body)
    assert obj is None
    assert errors[0].path == "kind" and f"did you mean {right}?" in errors[0].message


def test_an_endpoints_subset_with_ports_but_no_addresses_is_refused():
    body = copy.deepcopy(BASES["Endpoints"])
    body["subsets"] = [{"ports": [{"port": 80}]}]
    _, errors = validate_document("x.yaml", "0", body)
    assert [(e.path, e.message) for e in errors] == [
        ("subsets[0]", "must specify addresses or notReadyAddresses")]
