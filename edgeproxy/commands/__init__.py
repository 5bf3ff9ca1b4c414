"""One module per `edgeproxy` subcommand.

Each module defines ``register(subparsers) -> None`` which adds its parser and sets
``func=<callable(args) -> int>`` as the parser default; `edgeproxy.cli` discovers them all.
"""
