"""edgeproxy: a static, configuration-driven service proxy for offline Kubernetes edge nodes."""

__version__ = "0.1.0"
