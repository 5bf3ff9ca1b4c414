"""Every file of the real-world corpus is loaded, and every Service gets EXPECTED.tsv's verdict.

Verdicts are per file (NOTES.md), so each file is loaded as its own root. The corpus is a
copy of the project's shared one in tests/data/corpus (tests/test_corpus_copy.py keeps the
two equal).
"""

from __future__ import annotations

import csv
from pathlib import Path


from edgeproxy.manifests.catalog import ManifestCatalog
from edgeproxy.manifests.discovery import discover
from edgeproxy.model import Verdict
from edgeproxy.state import build_state

# traefik crd/fixtures/services.yml: three Services claim 10.10.0.1:80/TCP (docs 18, 19, 21).
# EXPECTED.tsv leaves the outcome undefined; edgeproxy's rule (smallest source wins) pins it:
# doc 18 keeps the port, 19 and 21 lose it and are skipped as "conflict".
TRAEFIK_SERVICES = "traefik__traefik__pkg_provider_kubernetes_crd_fixtures_services.yml"
PINNED_CONFLICT_LOSERS = {(TRAEFIK_SERVICES, "19"), (TRAEFIK_SERVICES, "21")}


def _expected_rows(corpus: Path) -> list[dict]:
    lines = [line for line in (corpus / "EXPECTED.tsv").read_text().splitlines()
             if line and not line.startswith("#")]
    header = lines[0].split("\t")
    return [dict(zip(header, row)) for row in csv.reader(lines[1:], delimiter="\t")]


def _load_file(path: Path):
    snapshot = ManifestCatalog(path).refresh()
    return snapshot, build_state(snapshot.objects, errors=snapshot.errors)


def test_discovery_selects_manifests_only(corpus_dir: Path) -> None:
    files = {p.name for p in discover(corpus_dir).files}
    assert "coredns__deployment__kubernetes_coredns.yaml.sed" not in files
    assert not {n for n in files if n.endswith((".md", ".tsv"))}
    assert "kubernetes__examples___archived_meteor_meteor-service.json" in files
    assert len(files) == 65  # 66 corpus files minus the .sed template


def test_every_expected_row(corpus_dir: Path) -> None:
    rows = _expected_rows(corpus_dir)
    assert len(rows) == 128
    loaded: dict[str, tuple] = {}
    checked = 0
    for row in rows:
        name = row["file"]
        if name not in loaded:
            loaded[name] = _load_file(corpus_dir / name)
        snapshot, state = loaded[name]
        where = f"{name}#{row['doc']}"
        if row["verdict"] == "file-unparseable":
            assert snapshot.objects == ()
            assert [e.document for e in snapshot.errors] == [None], where
            assert "YAML error" in snapshot.errors[0].message
            checked += 1
            continue
        matches = [v for v in state.services if v.source.document == row["doc"]]
        assert len(matches) == 1, where
        verdict = matches[0]
        assert f"{verdict.namespace}/{verdict.name}" == row["namespace/name"], where
        if (name, row["doc"]) in PINNED_CONFLICT_LOSERS:
            assert verdict.verdict == Verdict.SKIP and verdict.reason.value == "conflict", where
        elif row["verdict"] == "proxy":
            assert verdict.verdict == Verdict.PROXY, (where, verdict)
        else:
            assert f"skip:{verdict.reason.value}" == row["verdict"], (where, verdict)
        body = next(o.body for o in snapshot.objects if o.source == verdict.source)
        ports = " ".join(f"{p['port']}/{p.get('protocol') or 'TCP'}"
                         for p in (body.get("spec") or {}).get("ports") or [])
        assert (ports or "-") == row["ports"], where
        if verdict.verdict == Verdict.PROXY:
            served = [sp for sp in state.ports.values() if sp.source == verdict.source]
            backends = " ".join(
                f"{sp.port}/{sp.key.protocol.value}->{','.join(str(e) for e in sp.endpoints)}"
                for sp in served if sp.endpoints)
            assert (backends or "-") == row["backends_in_same_file"], where
            assert sorted(f"{sp.port}/{sp.key.protocol.value}" for sp in served) == \
                sorted(row["ports"].split()), where
        checked += 1
    assert checked == 128


def test_whole_corpus_loads_without_unexpected_errors(corpus_dir: Path) -> None:
    snapshot = ManifestCatalog(corpus_dir).refresh()
    rejected = sorted(Path(e.file).name for e in snapshot.errors if e.document is None)
    assert rejected == ["k3s-io__k3s__manifests_coredns.yaml",
                        "kubernetes__examples___archived_storage_vitess_etcd-service-template.yaml"]
    document_errors = [e for e in snapshot.errors if e.document is not None]
    assert document_errors == [], [str(e) for e in document_errors]


def test_timestamps_stay_strings(corpus_dir: Path) -> None:
    snapshot, state = _load_file(
        corpus_dir / "argoproj__argo-cd__gitops-engine_pkg_health_testdata_svc-clusterip.yaml")
    assert snapshot.errors == ()
    created = snapshot.objects[0].body["metadata"]["creationTimestamp"]
    assert created == "2018-10-27T06:36:27Z"


def test_sed_template_has_invalid_cluster_ip_when_named_explicitly(corpus_dir: Path) -> None:
    snapshot, state = _load_file(corpus_dir / "coredns__deployment__kubernetes_coredns.yaml.sed")
    (kube_dns,) = [v for v in state.services if v.name == "kube-dns"]
    assert kube_dns.source.document == "5"
    assert kube_dns.reason.value == "invalid-cluster-ip"


def test_list_items_are_documents(corpus_dir: Path) -> None:
    snapshot, _ = _load_file(corpus_dir / "kubernetes__kubernetes__hack_testdata_list.yaml")
    assert [o.source.document for o in snapshot.objects][:1] == ["0/items/0"]


def test_whole_directory_conflicts_are_reported(corpus_dir: Path) -> None:
    snapshot = ManifestCatalog(corpus_dir).refresh()
    state = build_state(snapshot.objects, errors=snapshot.errors)
    dup = [c for c in state.conflicts if c.what == "Service default/productpage defined twice"]
    assert len(dup) == 2
    assert all(c.winner < c.loser for c in dup)
    vip = [c for c in state.conflicts if c.what.startswith("10.0.0.1:80/TCP")]
    assert vip, [c.what for c in state.conflicts]
