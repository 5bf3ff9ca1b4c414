"""The daemon's settings, for the subcommands that talk to the daemon or the node.

`edgeproxy status`, `confirm-removal`, `doctor`, `rules`, `cleanup` and `validate` need some of
`edgeproxy run`'s settings (where the healthz server listens, the backend, the manifest
directory, the listen addresses...). They take the very same flags (same names, types, choices
and help, from `edgeproxy.daemon.options`) and `--config FILE`, and resolve them the same way:
flag > config file > default. So `edgeproxy status --config /etc/edgeproxy.yaml` asks the
daemon that config describes, wherever its healthz server was moved.

Stdlib only at import (the CLI parser is built before anything heavy is imported); the config
file is read (and validated against its schema) only when the command runs.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Iterable

from edgeproxy.daemon.options import OPTIONS_BY_DEST, add_flag

OUTPUT_FORMATS = ("text", "json", "yaml")


def add_config_options(parser: argparse.ArgumentParser, dests: Iterable[str]) -> None:
    """``--config`` and the daemon options ``dests``, spelled exactly as `edgeproxy run`'s."""
    parser.add_argument("--config", metavar="FILE", default=None,
                        help="the daemon's config file (e.g. /etc/edgeproxy.yaml): settings not "
                             "given as flags are taken from it")
    for dest in dests:
        option = OPTIONS_BY_DEST[dest]
        add_flag(parser, option, f"{option.help} [config: {option.key}]")
    parser.set_defaults(_config_dests=tuple(dests))


def add_output_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", choices=OUTPUT_FORMATS, default="text",
                        help="text for people (default), or one JSON or YAML document")


def resolve(args: argparse.Namespace, command: str) -> dict[str, Any]:
    """The typed values of the command's daemon settings: flag > config file > default.
    Exits with status 2 and a message naming the setting when a value is bad."""
    from edgeproxy.daemon.config import ConfigError, read_config_file
    from edgeproxy.daemon.options import OptionError, merge_values

    dests: tuple[str, ...] = getattr(args, "_config_dests", ())
    try:
        file_values = read_config_file(args.config) if args.config else {}
    except ConfigError as exc:
        print(f"edgeproxy {command}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    try:
        return merge_values([OPTIONS_BY_DEST[dest] for dest in dests], vars(args), file_values,
                            args.config)
    except OptionError as exc:
        print(f"edgeproxy {command}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def dump(doc: Any, output: str) -> str:
    """``doc`` as JSON or YAML text (for ``-o json`` / ``-o yaml``)."""
    if output == "yaml":
        import yaml

        return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, default_flow_style=False)
    import json

    return json.dumps(doc, indent=2) + "\n"
