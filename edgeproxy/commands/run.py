"""`edgeproxy run`: the daemon (see edgeproxy.daemon and docs/daemon.md)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from edgeproxy.daemon.options import add_arguments

    parser = subparsers.add_parser(
        "run", help="run the proxy daemon on a manifest directory",
        description="Watch the manifest directory, keep the nat chains ahead of kube-proxy and "
                    "forward every proxied service port. Durations are Go style (100ms, 1s, 5m).")
    add_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # gevent first: everything imported after this (sockets, subprocess, threading) must be
    # the cooperative version. queue stays the stdlib one (built on the patched threading
    # primitives, so still cooperative). watchdog is not imported in this process at all: its
    # observer runs in a child without gevent (edgeproxy/daemon/watch_process.py).
    from gevent import monkey

    monkey.patch_all(queue=False)

    import logging
    import os
    import sys

    from edgeproxy.daemon.config import ConfigError, build_config
    from edgeproxy.daemon.logs import configure_logging, log_event

    try:
        config = build_config(args)
    except ConfigError as exc:
        print(f"edgeproxy run: {exc}", file=sys.stderr)
        return 2
    configure_logging(config.log_format, config.verbosity)
    log = logging.getLogger("edgeproxy.daemon")
    # One daemon per node, decided before anything on the node is touched.
    from edgeproxy.daemon.instance import AlreadyRunning, acquire

    try:
        instance = acquire(config.state_dir)
    except AlreadyRunning as exc:
        log_event(log, logging.ERROR, "refusing to start", reason=str(exc))
        print(f"edgeproxy run: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"edgeproxy run: cannot use the state directory {config.state_dir}: "
              f"{exc.strerror or exc}", file=sys.stderr)
        return 1
    from edgeproxy.daemon.logs import install_hub_error_handler

    install_hub_error_handler()
    if os.geteuid() == 0 and not config.allow_insecure_manifests:
        # Files and directories inside are checked on every read (a bad one is refused alone,
        # edgeproxy/manifests/reader.py); a root whoever can rename or write is fatal.
        from edgeproxy.manifests.reader import TrustContext, trust_policy

        context = TrustContext(config.manifests, trust_policy(config.trusted_manifest_roots))
        problems = context.root_problems(config.manifests)
        if problems:
            for line in problems:
                log_event(log, logging.ERROR, "insecure manifest root", problem=line)
            print(f"edgeproxy run: refusing to serve {config.manifests}: "
                  f"{'; '.join(problems)}. Whoever can write there steers this node's "
                  "traffic. Fix the ownership and modes (root-owned, not writable by group or "
                  "other; a world-writable parent needs the sticky bit) or pass "
                  "--allow-insecure-manifests.", file=sys.stderr)
            return 1
    from edgeproxy.daemon.core import Daemon

    daemon = Daemon(config, reread_config=lambda: build_config(args))
    try:
        return daemon.run_forever()
    except OSError as exc:  # e.g. healthz port in use, no permission for the interface
        log_event(log, logging.ERROR, "cannot start", error=str(exc))
        print(f"edgeproxy run: cannot start: {exc}", file=sys.stderr)
        return 1
    finally:
        instance.release()
