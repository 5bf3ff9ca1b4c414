"""One set of manifests with every kind of Service the DNS answers for (shared by the tests)."""

from __future__ import annotations

from tests.support.manifests import objects as manifest_objects

MANIFESTS = """
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIP: 198.19.0.10
  clusterIPs: [198.19.0.10, "fd00:19::10"]
  ipFamilyPolicy: PreferDualStack
  ports:
  - {name: http, port: 80, targetPort: 8080}
  - {name: dns, port: 53, protocol: UDP}
  - {name: https-alt, port: 8443}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-abc
  namespace: default
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- addresses: [198.18.1.11]
- addresses: [198.18.1.12]
  conditions: {ready: false}
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: shop}
spec:
  clusterIP: None
  ports: [{name: pg, port: 5432}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: db-1
  namespace: shop
  labels: {kubernetes.io/service-name: db}
addressType: IPv4
ports: [{name: pg, port: 5432, protocol: TCP}]
endpoints:
- addresses: [198.18.1.21]
  hostname: db-0
- addresses: [198.18.1.22]
  hostname: db-1
  conditions: {ready: true}
- addresses: [198.18.1.23]
  hostname: db-2
  conditions: {ready: false}
---
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: shop}
spec:
  clusterIP: None
  ports: [{port: 80}]
---
apiVersion: v1
kind: Service
metadata:
  name: peers
  namespace: shop
spec:
  clusterIP: None
  publishNotReadyAddresses: true
  ports: [{name: gossip, port: 7946, protocol: UDP}]
---
apiVersion: v1
kind: Endpoints
metadata: {name: peers, namespace: shop}
subsets:
- notReadyAddresses: [{ip: "fd00:18::31"}]
  ports: [{name: gossip, port: 7946, protocol: UDP}]
---
apiVersion: v1
kind: Service
metadata: {name: legacy, namespace: default}
spec:
  clusterIP: 198.19.0.20
  ports: [{port: 7000}]
---
apiVersion: v1
kind: Endpoints
metadata: {name: legacy, namespace: default}
subsets:
- addresses: [{ip: 198.18.1.41}]
  ports: [{port: 7000}]
---
apiVersion: v1
kind: Service
metadata: {name: v6only, namespace: default}
spec:
  clusterIP: "fd00:19::30"
  ports: [{port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: ext, namespace: default}
spec:
  type: ExternalName
  externalName: upstream.example.
---
apiVersion: v1
kind: Service
metadata: {name: alias, namespace: default}
spec:
  type: ExternalName
  externalName: web.default.svc.cluster.local
---
apiVersion: v1
kind: Service
metadata: {name: noaddr, namespace: other}
spec:
  ports: [{port: 80}]
"""


def objects(text: str = MANIFESTS) -> list:
    return manifest_objects(text, "zone.yaml")
