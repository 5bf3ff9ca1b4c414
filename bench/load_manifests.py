#!/usr/bin/env python3
"""Manifest load benchmark: 10,000 Services + 10,000 EndpointSlices in 1,000 files.

Measures, in the same run and on the same files:
  floor   reading every file and ``list(yaml.load_all(data, Loader=yaml.CSafeLoader))``,
          i.e. the bare libyaml parse;
  full    ``ManifestCatalog(dir).refresh()`` (discovery, kubectl-like parse, schema + semantic
          validation) followed by ``build_state`` of all objects;
  reload  one file rewritten, then ``catalog.refresh([path])`` + ``build_state`` (what the
          daemon does on a watch event), and a full rescan ``refresh()`` (stat 1,000 files,
          parse one).
  command ``edgeproxy validate DIR -o json > /dev/null``, the command a user types, as a
          process (interpreter start, imports, JSON output included): median of ``--repeat``.
Library figures are the best of ``--repeat`` runs (the machine is shared; the best is the least
disturbed); floor and full runs alternate. Targets: full and the command <= 2.5x floor;
one-file reload < 50 ms.

    .venv/bin/python bench/load_manifests.py [--files 1000] [--per-file 10] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgeproxy.manifests.catalog import ManifestCatalog  # noqa: E402
from edgeproxy.state import BuildCache, build_state  # noqa: E402

SERVICE = """\
apiVersion: v1
kind: Service
metadata:
  name: svc-{n}
  namespace: ns-{ns}
  labels:
    app: app-{n}
    tier: backend
  annotations:
    mirrored-by: bench
  creationTimestamp: 2024-05-01T10:20:30Z
spec:
  type: ClusterIP
  clusterIP: 198.19.{a}.{b}
  clusterIPs: [198.19.{a}.{b}]
  selector:
    app: app-{n}
  sessionAffinity: None
  ports:
    - name: http
      port: 80
      protocol: TCP
      targetPort: http
    - name: metrics
      port: 9100
      protocol: TCP
      targetPort: 9100
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: svc-{n}-abcde
  namespace: ns-{ns}
  labels:
    kubernetes.io/service-name: svc-{n}
    endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io
addressType: IPv4
ports:
  - name: http
    port: 8080
    protocol: TCP
  - name: metrics
    port: 9100
    protocol: TCP
endpoints:
  - addresses: [198.18.{a}.{b}]
    conditions: {{ready: true, serving: true, terminating: false}}
    nodeName: node-1
  - addresses: [198.18.{c}.{b}]
    conditions: {{ready: true}}
    nodeName: node-2
  - addresses: [198.18.{d}.{b}]
    conditions: {{ready: false}}
    nodeName: node-3
"""


def write_tree(root: Path, files: int, per_file: int, generation: int = 0) -> list[Path]:
    paths = []
    for f in range(files):
        docs = []
        for i in range(per_file):
            n = f * per_file + i
            a, b = divmod(n, 250)
            docs.append(SERVICE.format(n=n, ns=f % 50, a=a % 250, b=b + 1, c=(a + 100 + generation) % 250,
                                       d=(a + 200) % 250))
        path = root / f"dir-{f % 10}" / f"services-{f:04d}.yaml"
        path.parent.mkdir(exist_ok=True)
        path.write_text("---\n".join(docs))
        paths.append(path)
    return paths


def floor(paths: list[Path]) -> int:
    count = 0
    for path in paths:
        with open(path, "rb") as handle:
            count += len(list(yaml.load_all(handle.read(), Loader=yaml.CSafeLoader)))
    return count


def best(fn, repeat: int):
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--per-file", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="edgeproxy-bench-") as tmp:
        root = Path(tmp)
        paths = write_tree(root, args.files, args.per_file)
        def full():
            catalog, cache = ManifestCatalog(root), BuildCache()  # as the daemon keeps them
            snapshot = catalog.refresh()
            return catalog, cache, snapshot, build_state(snapshot.objects,
                                                         errors=snapshot.errors, cache=cache)

        # Floor and full runs alternate, so both see the same share of a busy machine.
        floors, fulls = [], []
        for _ in range(args.repeat):
            t, docs = best(lambda: floor(paths), 1)
            floors.append(t)
            t, (catalog, cache, snapshot, state) = best(full, 1)
            fulls.append(t)
        t_floor, t_full = min(floors), min(fulls)
        assert not snapshot.errors, snapshot.errors[:3]
        assert len(state.ports) == 2 * args.files * args.per_file, len(state.ports)

        changed = paths[len(paths) // 2]
        reloads, rescans = [], []
        for generation in range(1, args.repeat + 1):
            text = changed.read_text().replace("198.18.", "198.18.", 1)
            changed.write_text(text.replace("node-1", f"node-1-g{generation}"))
            os.utime(changed, ns=(time.time_ns(), time.time_ns() + generation))
            parses = catalog.parses_total
            start = time.perf_counter()
            snap = catalog.refresh([changed])
            build_state(snap.objects, errors=snap.errors, cache=cache)
            reloads.append(time.perf_counter() - start)
            assert catalog.parses_total == parses + 1
            changed.write_text(changed.read_text() + "\n")
            start = time.perf_counter()
            snap = catalog.refresh()
            build_state(snap.objects, errors=snap.errors, cache=cache)
            rescans.append(time.perf_counter() - start)
            assert catalog.parses_total == parses + 2
        t_reload, t_rescan = min(reloads), min(rescans)

        # The command as a user runs it, median of --repeat (each after a floor run again).
        command = [sys.executable, "-m", "edgeproxy", "validate", "-o", "json", str(root)]
        commands, command_floors = [], []
        for _ in range(args.repeat):
            command_floors.append(best(lambda: floor(paths), 1)[0])
            with open(os.devnull, "wb") as sink:
                start = time.perf_counter()
                result = subprocess.run(command, stdout=sink, stderr=subprocess.PIPE)
                commands.append(time.perf_counter() - start)
            assert result.returncode == 0, result.stderr.decode()[-2000:]
        t_command = statistics.median(commands)
        t_command_floor = statistics.median(command_floors)

    print(f"{args.files} files, {docs} documents ({len(state.ports)} service ports), "
          f"best of {args.repeat}")
    print(f"{'measure':<44}{'seconds':>10}{'ratio':>10}")
    print(f"{'floor: yaml.load_all(CSafeLoader)':<44}{t_floor:>10.3f}{1.0:>10.2f}")
    print(f"{'full load + validation + build_state':<44}{t_full:>10.3f}{t_full / t_floor:>10.2f}"
          f"   target <= 2.50 {'OK' if t_full <= 2.5 * t_floor else 'MISSED'}")
    print(f"{'one-file reload (refresh([path]) + build)':<44}{t_reload:>10.4f}{t_reload / t_floor:>10.3f}"
          f"   target < 0.050 s {'OK' if t_reload < 0.05 else 'MISSED'}")
    print(f"{'rescan, one file changed (refresh() + build)':<44}{t_rescan:>10.4f}"
          f"{t_rescan / t_floor:>10.3f}")
    ratio = t_command / t_command_floor
    print(f"{'edgeproxy validate DIR -o json (median)':<44}{t_command:>10.3f}{ratio:>10.2f}"
          f"   target <= 2.50 {'OK' if ratio <= 2.5 else 'MISSED'}"
          f"   (floor median {t_command_floor:.3f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
