"""Service verdicts: EdgeMesh's label modes, the skip rules and their precedence."""

from __future__ import annotations

import pytest

from edgeproxy.model import SERVICE_PROXY_NAME_LABEL, FilterMode, SkipReason
from edgeproxy.state.filtering import service_vips, skip_reasons, verdict_reason

EXISTS = FilterMode.FILTER_IF_LABEL_EXISTS
DOES_NOT = FilterMode.FILTER_IF_LABEL_DOES_NOT_EXISTS


def svc(labels=None, **spec) -> dict:
    spec.setdefault("ports", [{"port": 80}])
    return {"metadata": {"name": "s", "labels": labels}, "spec": spec}


@pytest.mark.parametrize("value", ["", "other-proxy"])
def test_label_present_with_any_value(value: str) -> None:
    body = svc({SERVICE_PROXY_NAME_LABEL: value}, clusterIP="198.19.0.1")
    assert verdict_reason(body, EXISTS) == SkipReason.LABEL
    assert verdict_reason(body, DOES_NOT) is None


def test_label_absent() -> None:
    body = svc({"app": "x", "service.kubernetes.io/service-proxy-name": "x"}, clusterIP="198.19.0.1")
    assert verdict_reason(body, EXISTS) is None  # only EdgeMesh's own label counts
    assert verdict_reason(body, DOES_NOT) == SkipReason.LABEL


@pytest.mark.parametrize("spec,reason", [
    ({"type": "ExternalName", "externalName": "x.example"}, SkipReason.EXTERNALNAME),
    ({"clusterIP": "None"}, SkipReason.HEADLESS),
    ({}, SkipReason.NO_CLUSTER_IP),
    ({"clusterIP": ""}, SkipReason.NO_CLUSTER_IP),
    ({"clusterIP": "CLUSTER_DNS_IP"}, SkipReason.INVALID_CLUSTER_IP),
    ({"clusterIP": "198.19.0.1", "ports": []}, SkipReason.NO_PORTS),
    ({"clusterIP": "198.19.0.1", "ports": [{"port": 9, "protocol": "SCTP"}]}, SkipReason.NO_PORTS),
    ({"type": "NodePort", "clusterIP": "198.19.0.1", "externalName": "stray"}, None),
    ({"clusterIPs": ["fc00::1"]}, None),
])
def test_skip_rules(spec: dict, reason) -> None:
    assert verdict_reason(svc(**spec), EXISTS) == reason


def test_precedence() -> None:
    body = svc({SERVICE_PROXY_NAME_LABEL: ""}, type="ExternalName", clusterIP="None", ports=[])
    assert skip_reasons(body, EXISTS) == [SkipReason.LABEL, SkipReason.EXTERNALNAME,
                                          SkipReason.HEADLESS, SkipReason.NO_PORTS]
    assert skip_reasons(svc(type="ExternalName"), EXISTS) == [SkipReason.EXTERNALNAME,
                                                              SkipReason.NO_CLUSTER_IP]


def test_vips_prefer_cluster_ips() -> None:
    assert service_vips({"clusterIP": "198.19.0.1", "clusterIPs": ["198.19.0.1", "fc00::1"]}) == [
        "198.19.0.1", "fc00::1"]
    assert service_vips({"clusterIP": "198.19.0.1"}) == ["198.19.0.1"]
    assert service_vips({}) == []
