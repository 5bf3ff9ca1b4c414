"""`edgeproxy demo`: the main job shown end to end on a throw-away edge node in namespaces.

What the command needs, and nothing else (the tests and benchmarks build on it):

- `walkthrough` the steps a user watches (`run_demo`), with the example manifests shipped in
                the package (`default_manifests`);
- `netns`       private network namespaces and veth pairs (``ip netns``), removed on any exit;
- `topology`    pod, node and backends namespaces with the example backends and dnsmasq;
- `backends`    the backend server process (``python -m edgeproxy.demo.backends``);
- `kube_proxy`  the stand-in kube-proxy (iptables mode) and a reader of the node's tables;
- `daemon`      the real `edgeproxy run` as a subprocess inside the node namespace;
- `clients`     HTTP and echo clients made inside a namespace, and polling.

Nothing here touches the host's own network namespace, and nothing imports the tests or the
benchmarks: the demo runs from an installed wheel.
"""

from edgeproxy.demo.walkthrough import default_manifests, run_demo

__all__ = ["default_manifests", "run_demo"]
