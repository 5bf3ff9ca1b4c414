"""Parsing of iptables-save / iptables-restore text and semantic comparison of rules.

The backends read the live tables with ``iptables-save`` and the tests trace packets through
rendered restore text; both need the same small model: tables of ordered chains of rules.
Rules are compared after `normalize`, so ``-d 1.2.3.4`` equals ``-d 1.2.3.4/32``, quoting of
comments does not matter, and the order in which iptables-save prints the base options (it
moves ``-d``/``-p`` in front of the matches) cannot make a correct rule look wrong.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

BUILTIN_CHAINS = {
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
    "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
    "raw": ("PREROUTING", "OUTPUT"),
    "security": ("INPUT", "FORWARD", "OUTPUT"),
}

# Options that take one value and belong to the rule itself (not to a -m match module).
_BASE_OPTIONS = {
    "-s": "-s", "--source": "-s", "--src": "-s",
    "-d": "-d", "--destination": "-d", "--dst": "-d",
    "-p": "-p", "--protocol": "-p",
    "-i": "-i", "--in-interface": "-i",
    "-o": "-o", "--out-interface": "-o",
}


_NEEDS_QUOTES = re.compile(r'[\s"\\]')


def quote(token: str) -> str:
    """Quote a token for iptables-restore: only when it is empty or holds whitespace, a quote
    or a backslash (restore splits on whitespace and honours double quotes)."""
    if token and not _NEEDS_QUOTES.search(token):
        return token
    return '"' + token.replace("\\", "\\\\").replace('"', '\\"') + '"'


def format_rule(tokens: tuple[str, ...] | list[str]) -> str:
    line = " ".join(tokens)
    if _NEEDS_QUOTES.search(line) is None or all(t and not _NEEDS_QUOTES.search(t)
                                                  for t in tokens):
        return line
    return " ".join(quote(t) for t in tokens)


# iptables-save quotes with double quotes and backslash escapes only; a regex split is ~30x
# faster than shlex on a 20,000-rule table.
_TOKEN = re.compile(r'"((?:[^"\\]|\\.)*)"|(\S+)')
_UNESCAPE = re.compile(r"\\(.)")


def split_rule(line: str) -> list[str]:
    if '"' not in line:
        return line.split()
    tokens = []
    for quoted, bare in _TOKEN.findall(line):
        tokens.append(_UNESCAPE.sub(r"\1", quoted) if bare == "" else bare)
    return tokens


def _address(value: str) -> str:
    if "/" in value:
        return value
    return value + ("/128" if ":" in value else "/32")


def normalize(tokens: tuple[str, ...] | list[str]) -> tuple:
    """A comparable form of a rule spec (everything after ``-A CHAIN``)."""
    base: list[tuple[str, ...]] = []
    matches: list[tuple[str, ...]] = []
    target: tuple[str, ...] = ()
    current: list[str] | None = None
    negate = False
    i = 0
    toks = list(tokens)
    while i < len(toks):
        tok = toks[i]
        if tok == "!" and i + 1 < len(toks) and toks[i + 1] in _BASE_OPTIONS:
            negate = True
            i += 1
            continue
        if tok in _BASE_OPTIONS and i + 1 < len(toks):
            name = _BASE_OPTIONS[tok]
            value = toks[i + 1]
            if name in ("-s", "-d"):
                value = _address(value)
            elif name == "-p":
                value = value.lower()
            base.append(("!" if negate else "", name, value))
            negate = False
            current = None
            i += 2
            continue
        if tok in ("-m", "--match") and i + 1 < len(toks):
            current = ["-m", toks[i + 1]]
            matches.append(current)  # type: ignore[arg-type]
            i += 2
            continue
        if tok in ("-j", "--jump", "-g", "--goto"):
            target = tuple(["-j" if tok in ("-j", "--jump") else "-g"] + toks[i + 1:])
            break
        if current is not None:
            current.append(tok)
        else:
            base.append(("", tok))
        i += 1
    return (frozenset(base), tuple(sorted(tuple(m) for m in matches)), target)


@dataclass
class Rule:
    chain: str
    tokens: tuple[str, ...]

    @property
    def target(self) -> str | None:
        for flag in ("-j", "-g"):
            if flag in self.tokens:
                idx = self.tokens.index(flag)
                if idx + 1 < len(self.tokens):
                    return self.tokens[idx + 1]
        return None

    def option(self, name: str) -> str | None:
        """Value following option ``name`` (e.g. ``--to-destination``), None when absent."""
        if name in self.tokens:
            idx = self.tokens.index(name)
            if idx + 1 < len(self.tokens):
                return self.tokens[idx + 1]
        return None

    def key(self) -> tuple:
        return normalize(self.tokens)

    def __str__(self) -> str:
        return f"-A {self.chain} {format_rule(self.tokens)}"


@dataclass
class Table:
    name: str
    chains: dict[str, list[Rule]] = field(default_factory=dict)  # declaration order
    # Set by the iptables backend's reader: our chains' rules as raw save lines (quotes
    # removed in ``raw``), their ``chains`` entries then stay empty.
    raw: dict[str, list[str]] | None = None
    raw_lines: dict[str, list[str]] | None = None

    def rules(self, chain: str) -> list[Rule]:
        if self.raw_lines is not None and chain in self.raw_lines:
            return [Rule(chain, tuple(split_rule(line)[2:])) for line in self.raw_lines[chain]]
        return self.chains.get(chain, [])


class ParseError(ValueError):
    pass


def parse_save(text: str, into: dict[str, Table] | None = None) -> dict[str, Table]:
    """Parse iptables-save output (or restore text made of ``:`` and ``-A`` / ``-I`` lines).

    ``-I CHAIN [N]`` inserts like iptables would; ``-D``, ``-F``, ``-X`` are applied too, so a
    restore text produced by the backends can be replayed onto a parsed table (``into``, which
    is left unchanged: the result is a new mapping).
    """
    tables: dict[str, Table] = {
        name: Table(name, {c: list(rules) for c, rules in t.chains.items()})
        for name, t in (into or {}).items()
    }
    table: Table | None = None
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            name = line[1:]
            table = tables.setdefault(name, Table(name))
            for builtin in BUILTIN_CHAINS.get(name, ()):
                table.chains.setdefault(builtin, [])
            continue
        if line == "COMMIT":
            table = None
            continue
        if table is None:
            raise ParseError(f"line {lineno}: rule outside a table: {line}")
        if line.startswith(":"):
            chain = line[1:].split()[0]
            if chain in BUILTIN_CHAINS.get(table.name, ()):
                table.chains.setdefault(chain, [])  # only sets the policy
            else:
                table.chains[chain] = []  # declaring a user chain flushes it, even --noflush
            continue
        if line.count('"') % 2:
            raise ParseError(f"line {lineno}: unbalanced quotes: {line}")
        tokens = split_rule(line)
        op, chain, rest = tokens[0], tokens[1] if len(tokens) > 1 else "", tokens[2:]
        if op in ("-A", "--append"):
            table.chains.setdefault(chain, []).append(Rule(chain, tuple(rest)))
        elif op in ("-I", "--insert"):
            pos = 1
            if rest and rest[0].isdigit():
                pos, rest = int(rest[0]), rest[1:]
            table.chains.setdefault(chain, []).insert(pos - 1, Rule(chain, tuple(rest)))
        elif op in ("-D", "--delete"):
            rules = table.chains.get(chain, [])
            if rest and rest[0].isdigit():
                del rules[int(rest[0]) - 1]
            else:
                wanted = normalize(rest)
                for idx, rule in enumerate(rules):
                    if rule.key() == wanted:
                        del rules[idx]
                        break
        elif op in ("-F", "--flush"):
            table.chains[chain] = []
        elif op in ("-X", "--delete-chain"):
            table.chains.pop(chain, None)
        elif op in ("-P", "--policy"):
            table.chains.setdefault(chain, [])  # `iptables -S` prints policies this way
        elif op in ("-N", "--new-chain"):
            table.chains.setdefault(chain, [])
        else:
            raise ParseError(f"line {lineno}: unsupported operation {op}: {line}")
    return tables
