"""README's "where things live" table names only files and folders that exist."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _paths(cell: str) -> list[str]:
    found = []
    for text in re.findall(r"`([^`]+)`", cell):
        if "/" not in text:
            continue
        braces = re.match(r"(.*)\{([^}]*)\}(.*)", text)
        if braces:
            head, options, tail = braces.groups()
            found += [f"{head}{option}{tail}" for option in options.split(",")]
        else:
            found.append(text)
    return found


def test_where_things_live_names_existing_paths():
    readme = (REPO / "README.md").read_text()
    table = readme.split("## Where things live", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    paths = [p for row in rows[1:] for p in _paths(row.rsplit("|", 2)[1])]
    assert len(paths) > 20
    missing = [p for p in paths if not (REPO / p).exists()]
    assert not missing, missing
