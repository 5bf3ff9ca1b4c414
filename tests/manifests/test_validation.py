"""Schema and semantic validation: each rule of the API server edgeproxy enforces, and the
shape of every error (file, document, kind, namespace/name, field path, message)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from edgeproxy.manifests.validation import schemas_dir, validate_document, validate_instance

SERVICE = {
    "apiVersion": "v1", "kind": "Service",
    "metadata": {"name": "web", "namespace": "shop"},
    "spec": {"clusterIP": "198.19.0.10", "clusterIPs": ["198.19.0.10"],
             "ports": [{"name": "http", "port": 80, "targetPort": "http"},
                       {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 5353}]},
}
SLICE = {
    "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
    "metadata": {"name": "web-abc", "labels": {"kubernetes.io/service-name": "web"}},
    "addressType": "IPv4",
    "ports": [{"name": "http", "port": 8080}],
    "endpoints": [{"addresses": ["198.18.1.11"], "conditions": {"ready": True}}],
}
ENDPOINTS = {
    "apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "web"},
    "subsets": [{"addresses": [{"ip": "198.18.1.11"}], "ports": [{"port": 8080}]}],
}


def errors_of(body: dict) -> list[tuple[str, str]]:
    obj, errors = validate_document("f.yaml", "3", body)
    assert (obj is None) == bool(errors)
    return [(e.path, e.message) for e in errors]


def mutate(body: dict, path: str, value) -> dict:
    out = copy.deepcopy(body)
    node = out
    parts = path.split(".")
    for part in parts[:-1]:
        node = node[int(part)] if part.isdigit() else node[part]
    last = parts[-1]
    if value is _DELETE:
        del node[last]
    elif last.isdigit():
        node[int(last)] = value
    else:
        node[last] = value
    return out


_DELETE = object()


def test_valid_objects_become_kube_objects() -> None:
    obj, errors = validate_document("f.yaml", "3", SERVICE)
    assert errors == [] and obj is not None
    assert (obj.kind, obj.namespace, obj.name, str(obj.source)) == ("Service", "shop", "web",
                                                                    "f.yaml#3")
    obj, _ = validate_document("f.yaml", "0", SLICE)
    assert obj.namespace == "default"  # omitted namespace reads as default
    assert errors_of(ENDPOINTS) == []


@pytest.mark.parametrize("path,value,field", [
    ("spec.ports.0.port", 0, "spec.ports[0].port"),
    ("spec.ports.0.port", 65536, "spec.ports[0].port"),
    ("spec.ports.0.protocol", "HTTP", "spec.ports[0].protocol"),
    ("spec.ports.0.targetPort", "8080", "spec.ports[0].targetPort"),  # not an IANA_SVC_NAME
    ("spec.ports.0.targetPort", "my--port", "spec.ports[0].targetPort"),
    ("spec.ports.0.targetPort", "much-too-long-name", "spec.ports[0].targetPort"),
    ("spec.ports.0.targetPort", 70000, "spec.ports[0].targetPort"),
    ("spec.type", "Ingress", "spec.type"),
    ("spec.sessionAffinity", "Cookie", "spec.sessionAffinity"),
    ("spec.sessionAffinityConfig", {"clientIP": {"timeoutSeconds": 86401}},
     "spec.sessionAffinityConfig.clientIP.timeoutSeconds"),
    ("spec.sessionAffinityConfig", {"clientIP": {"timeoutSeconds": 0}},
     "spec.sessionAffinityConfig.clientIP.timeoutSeconds"),
    ("spec.ipFamilies", ["IPv5"], "spec.ipFamilies[0]"),
    ("spec.ipFamilyPolicy", "DualStack", "spec.ipFamilyPolicy"),
    ("spec.externalIPs", ["198.18.0.300"], "spec.externalIPs[0]"),
    ("metadata.name", "Web", "metadata.name"),  # DNS-1035: lower case
    ("metadata.name", "1web", "metadata.name"),  # DNS-1035: starts with a letter
    ("metadata.name", _DELETE, "metadata.name"),  # the missing field itself is named
    ("metadata.namespace", "Shop_1", "metadata.namespace"),
])
def test_service_schema_rules(path: str, value, field: str) -> None:
    errors = errors_of(mutate(SERVICE, path, value))
    assert field in [p for p, _ in errors], errors


def test_timestamps_as_loaded_pass() -> None:
    body = mutate(SERVICE, "metadata.creationTimestamp", "2018-10-27T06:36:27Z")
    assert errors_of(body) == []


@pytest.mark.parametrize("path,value,field,words", [
    ("spec.clusterIPs", ["198.19.0.11"], "spec.clusterIPs[0]", "must equal spec.clusterIP"),
    ("spec.ports.1.name", "http", "spec.ports[1].name", "duplicate port name"),
    ("spec.ports.1.name", "", "spec.ports[1].name", "required when"),
    ("spec.ports.1", {"name": "other", "port": 80}, "spec.ports[1]", "duplicate port 80/TCP"),
])
def test_service_semantic_rules(path, value, field, words) -> None:
    errors = errors_of(mutate(SERVICE, path, value))
    assert any(p == field and words in m for p, m in errors), errors


def test_same_port_number_on_two_protocols_is_fine() -> None:
    body = mutate(SERVICE, "spec.ports.1", {"name": "dns-tcp", "port": 80, "protocol": "UDP"})
    assert errors_of(body) == []


@pytest.mark.parametrize("address,words", [
    ("127.0.0.1", "loopback"), ("169.254.1.1", "link-local"), ("224.0.0.5", "link-local multicast"),
    ("0.0.0.0", "unspecified"), ("fd00::1", "is IPv6 but addressType is IPv4"),
    ("web.local", "not an IP address"),
])
def test_endpointslice_addresses(address: str, words: str) -> None:
    errors = errors_of(mutate(SLICE, "endpoints.0.addresses", [address]))
    assert errors and errors[0][0] == "endpoints[0].addresses[0]" and words in errors[0][1]


def test_endpointslice_schema_and_ipv6_family() -> None:
    assert errors_of(mutate(SLICE, "addressType", "IPv7"))[0][0] == "addressType"
    v6 = mutate(mutate(SLICE, "addressType", "IPv6"), "endpoints.0.addresses",
                ["2001:0db8:3c4d:0015:0000:0000:1a2f:1a2b"])
    assert errors_of(v6) == []
    link_local_mc = mutate(v6, "endpoints.0.addresses", ["ff02::1"])
    assert "link-local multicast" in errors_of(link_local_mc)[0][1]


def test_endpoints_addresses() -> None:
    bad = mutate(ENDPOINTS, "subsets.0.addresses", [{"ip": "fe80::1"}])
    assert errors_of(bad)[0][0] == "subsets[0].addresses[0].ip"
    assert errors_of(mutate(ENDPOINTS, "subsets.0.addresses", [{"ip": "nope"}]))


def test_kind_and_api_version() -> None:
    assert errors_of(mutate(SLICE, "apiVersion", "discovery.k8s.io/v1beta1")) == [
        ("apiVersion", "EndpointSlice must be apiVersion discovery.k8s.io/v1, got "
                       '"discovery.k8s.io/v1beta1"')]
    assert errors_of({"apiVersion": "v1", "metadata": {"name": "x"}})[0][0] == "kind"
    obj, errors = validate_document("f.yaml", "0", {"apiVersion": "apps/v1", "kind": "Deployment",
                                                    "spec": "not even validated"})
    assert errors == [] and obj.kind == "Deployment"


def test_destination_rule() -> None:
    rule = {"apiVersion": "networking.istio.io/v1beta1", "kind": "DestinationRule",
            "metadata": {"name": "web"},
            "spec": {"host": "web", "trafficPolicy": {"loadBalancer": {"simple": "RANDOM"}}}}
    assert errors_of(rule) == []
    least = mutate(rule, "spec.trafficPolicy.loadBalancer.simple", "LEAST_CONN")
    assert errors_of(least)[0][0] == "spec.trafficPolicy.loadBalancer.simple"
    cookie = mutate(rule, "spec.trafficPolicy.loadBalancer", {"consistentHash": {
        "httpCookie": {"name": "c"}}})
    assert errors_of(cookie)
    assert errors_of(mutate(rule, "apiVersion", "networking.istio.io/v2"))[0][0] == "apiVersion"


def test_error_names_everything() -> None:
    _, errors = validate_document("dir/f.yaml", "2/items/1", mutate(SERVICE, "spec.ports.0.port", 0))
    (err,) = errors
    assert err.to_dict() == {"file": "dir/f.yaml", "document": "2/items/1", "kind": "Service",
                             "namespace": "shop", "name": "web", "path": "spec.ports[0].port",
                             "message": err.message}
    assert str(err).startswith("dir/f.yaml document 2/items/1 Service shop/web spec.ports[0].port:")


def test_validate_instance_any_schema(tmp_path: Path, monkeypatch) -> None:
    assert schemas_dir().joinpath("service.schema.json").is_file()
    (tmp_path / "thing.schema.json").write_text(json.dumps({
        "type": "object", "properties": {"ip": {"format": "ipv4"}, "n": {"type": "integer"}}}))
    monkeypatch.setenv("EDGEPROXY_SCHEMAS_DIR", str(tmp_path))
    assert schemas_dir() == tmp_path
    assert validate_instance("thing.schema.json", {"ip": "198.18.0.1", "n": 1}) == []
    assert validate_instance("thing.schema.json", {"ip": "198.18.0.256", "n": "x"}) == [
        ("ip", '"198.18.0.256" is not a valid ipv4 address'), ("n", 'must be an integer, got "x"')]


@pytest.mark.parametrize("text", [
    "apiVersion: v1\nkind: Service\nmetadata: {name: a, labels: {80: [x]}}\nspec: {ports: [{port: 1}]}\n",
    "apiVersion: v1\nkind: Service\nmetadata: [a]\n",
    "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [7, null, {port: !!binary aGk=}]}\n",
    "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: " + "[" * 500 + "]" * 500 + "\n",
    "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: a}\naddressType: IPv4\n"
    "endpoints: [{addresses: [1]}, {addresses: []}, null]\nports: [{port: null}]\n",
    "apiVersion: v1\nkind: Endpoints\nmetadata: {name: a}\nsubsets: [{addresses: [{ip: null}]}]\n",
    "apiVersion: 1\nkind: {a: b}\n",
    "kind: List\nitems: {not: a list}\n",
])
def test_hostile_documents_give_errors_not_exceptions(tmp_path: Path, text: str) -> None:
    from edgeproxy.manifests import load_objects
    from edgeproxy.state import build_state

    (tmp_path / "x.yaml").write_text(text)
    objects, errors = load_objects([tmp_path])
    build_state(objects, errors=errors)
    assert errors or all(o.kind not in ("Service", "Endpoints", "EndpointSlice") for o in objects)
    for err in errors:
        assert err.file.endswith("x.yaml") and err.message
