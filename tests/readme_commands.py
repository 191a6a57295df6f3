"""The shell commands a README shows, as argument lists: what tests/test_readme.py runs.

Commands are taken from fenced ```bash (sh, shell, console) blocks, and from indented code blocks for lines that
start with ``climateml``. A logical line joins ``\\`` continuations and drops ``# comments``; it is split at
``&&`` and ``;``. The README's shorthands expand to every command they stand for:

- ``a|b|c`` (a word without blanks or quotes): one command per alternative, e.g. ``synth climatebench|climatenet``;
- ``<task>``: one command per task (temperature, segmentation, nowcasting), the same task in every ``<task>``;
- ``[--nlat 96 --nlon 144]``: an optional group, run with its options; ``[options]`` (no option in it) is dropped.

Quoted words are never expanded (``--target '{kind: class_score, cls: 1}'`` stays one word).
"""

from __future__ import annotations

import itertools
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

TASKS = ("temperature", "segmentation", "nowcasting")
SHELL_FENCES = ("bash", "sh", "shell", "console")


@dataclass(frozen=True)
class Command:
    doc: str  # the README's path relative to the repository
    line: int  # 1-based line of the command's first physical line
    argv: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.doc}:{self.line}: {shlex.join(self.argv)}"


def code_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) of every shell line: all lines of fenced shell blocks, and lines of indented blocks
    that start with ``climateml``."""
    out, fence = [], None
    for no, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if stripped.startswith("```"):
            if fence is None:
                fence = stripped[3:].strip().lower() or "text"
            else:
                fence = None
            continue
        if fence is not None:
            if fence in SHELL_FENCES:
                out.append((no, line[line.index(stripped):] if stripped else ""))
        elif line.startswith("    ") and stripped.startswith("climateml "):
            out.append((no, stripped))
    return out


def logical_lines(lines: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """Join ``\\`` continuations; the line number is the first physical line's."""
    out, start, parts = [], None, []
    for no, line in lines:
        if start is None:
            start = no
        text = line.rstrip()
        if text.endswith("\\") and not text.endswith("\\\\"):
            parts.append(text[:-1])
            continue
        parts.append(text)
        joined = " ".join(p.strip() for p in parts).strip()
        if joined:
            out.append((start, joined))
        start, parts = None, []
    return out


def raw_words(line: str) -> list[str]:
    """Words with their quotes kept, up to an unquoted ``#`` that starts a word (a comment); ``&&`` and ``;``
    become words of their own."""
    words, word, quote, i = [], "", None, 0
    while i < len(line):
        c = line[i]
        if quote:
            word += c
            if c == quote:
                quote = None
        elif c in "'\"":
            word += c
            quote = c
        elif c == "\\" and i + 1 < len(line):
            word += line[i:i + 2]
            i += 1
        elif c.isspace():
            if word:
                words.append(word)
            word = ""
        elif c == "#" and not word:
            break
        elif line.startswith("&&", i) or c == ";":
            if word:
                words.append(word)
            words.append("&&" if c == "&" else ";")
            word = ""
            i += 1 if c == "&" else 0
        else:
            word += c
        i += 1
    if quote:
        raise ValueError(f"unbalanced quote in {line!r}")
    if word:
        words.append(word)
    return words


def _quoted(word: str) -> bool:
    return "'" in word or '"' in word


def _optional_groups(words: list[str]) -> list[str]:
    """``[--a 1 --b 2]`` -> ``--a 1 --b 2``; ``[options]`` (no option inside) -> nothing."""
    out, group = [], None
    for w in words:
        if group is None and w.startswith("[") and not _quoted(w):
            group = []
            w = w[1:]
        if group is None:
            out.append(w)
            continue
        closing = w.endswith("]") and not _quoted(w)
        if closing:
            w = w[:-1]
        if w:
            group.append(w)
        if closing:
            if any(g.startswith("-") for g in group):
                out += group
            group = None
    if group is not None:
        raise ValueError(f"unclosed [ in {' '.join(words)!r}")
    return out


def expand(words: list[str]) -> list[list[str]]:
    """Every command a word list stands for: ``<task>`` per task, then ``a|b`` alternatives (cross product)."""
    variants = [[w.replace("<task>", t) for w in words] for t in TASKS] if any("<task>" in w for w in words) \
        else [words]
    out = []
    for ws in variants:
        choices = [w.split("|") if "|" in w and not _quoted(w) else [w] for w in ws]
        out += [list(c) for c in itertools.product(*choices)]
    return out


def commands(path: Path, root: Path) -> list[Command]:
    """Every command of a README, in order, expanded and split into argv lists (quotes removed)."""
    found = []
    for no, line in logical_lines(code_lines(path.read_text())):
        words = raw_words(line)
        pieces, current = [], []
        for w in words + ["&&"]:
            if w in ("&&", ";"):
                if current:
                    pieces.append(current)
                current = []
            else:
                current.append(w)
        for piece in pieces:
            for ws in expand(_optional_groups(piece)):
                argv = shlex.split(" ".join(ws))
                if argv:
                    found.append(Command(str(path.relative_to(root)), no, tuple(argv)))
    return found


def option(argv: tuple[str, ...] | list[str], name: str) -> str | None:
    """The value of ``name`` (``--name value`` or ``--name=value``) in ``argv``, the last one given; None if absent."""
    value = None
    for i, a in enumerate(argv):
        if a == name and i + 1 < len(argv):
            value = argv[i + 1]
        elif a.startswith(name + "="):
            value = a[len(name) + 1:]
    return value


def task_of(argv: tuple[str, ...]) -> str | None:
    """The task whose config a command uses (``--config configs/<task>.yaml``), or None."""
    config = option(argv, "--config")
    m = re.search(r"configs/(\w+)\.yaml$", config or "")
    return m.group(1) if m else None
