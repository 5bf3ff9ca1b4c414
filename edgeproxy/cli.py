"""The `edgeproxy` command line: builds the parser from `edgeproxy.commands` and dispatches.

Exit statuses follow the usual convention: 0 success, 1 the command found a problem,
2 usage error (argparse's own), 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from typing import Sequence

from edgeproxy import commands


class _VersionAction(argparse.Action):
    """argparse's "version" action, but the commit is looked up only when asked for (an
    editable checkout runs git for it)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        from edgeproxy.buildinfo import version_line

        print(version_line())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgeproxy",
        description="Static service proxy for offline Kubernetes edge nodes.",
    )
    parser.add_argument("--version", action=_VersionAction, nargs=0,
                        help="show the version and the commit it was built from, and exit")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for module_info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if module_info.name.startswith("_"):
            continue  # helpers shared by the subcommands, not one of them
        module = importlib.import_module(f"{commands.__name__}.{module_info.name}")
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `edgeproxy rules | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
