"""The results registry: every number in the docs comes from a file under ``bench/results/``.

Two checks tie the docs (``README.md``, ``docs/*.md``) to the results files:

**Generated blocks.** A doc may embed part of a results Markdown file between two markers::

    <!-- results: bench/results/compare_small.md#fair-comparison-on-small -->
    (the section, copied verbatim)
    <!-- /results -->

The path is relative to the repository root. Without ``#anchor`` the body is the whole
file; with it, the body is the named section: the lines after the heading whose text or
GitHub-style slug is ``anchor``, up to the next heading of any level (so a section does
not include its subsections), without leading and trailing blank lines. The rendered block
is the opening marker, a blank line, the body, a blank line, the closing marker.
:func:`render_doc` re-renders every block of a doc from its file (``make results``);
:func:`out_of_date` lists the docs whose blocks differ from what their files render
(``make results ARGS=--check``, run by ``tests/test_docs_numbers.py``).

**Backed numbers** (:func:`unbacked_numbers`). A doc is cut into units: paragraphs
(separated by blank lines), each generated block as a whole, and fenced code blocks, which
are skipped. Within a unit, inline code spans are skipped (config values, commands). What
looks like a result must be backed by a results file the same unit cites by path
(``bench/results/<file>``, ``bench/results/<a>.{md,json}`` expands to both files, a
directory stands for the files in it); a table may also rely on the paths cited by the
paragraph right above it (its caption), and a generated block cites its own file. A number
looks like a result when it is

* a decimal with at least three digits after the point (``0.1453``, ``0.0047``, ``12.345``),
  except an arXiv identifier (``arXiv 2508.16170``);
* a signed percentage (``+4.2%``, ``−3.6%``, ``±5%``);
* a p-value: every number after a standalone ``p`` or ``p-value`` (optionally followed by
  ``=``, ``<``, ``≤``, ``>``, ``≥``), including the ones of a ``/``-separated list
  (``p 0.073 / 0.13``, ``p 7e-6``).

The number is backed when one of the cited files contains a number that rounds to it at
the precision written (half a unit of its last digit; ``7e-6`` is backed by ``6.96e-06``,
``0.613`` by ``0.6125``), signs ignored; a percentage is compared as written (``4.2%``
needs ``4.2`` in the file, not ``0.042``).

``python -m egra.experiments.registry [--check] [--numbers] [--root DIR] [FILE ...]``.
This module imports nothing of the project, so the docs tooling runs without torch.
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

RESULTS_DIR = "bench/results"
OPEN_RE = re.compile(r"^<!--\s*results:\s*(?P<path>[^\s#]+)(?:#(?P<anchor>\S+))?\s*-->\s*$")
CLOSE_RE = re.compile(r"^<!--\s*/results\s*-->\s*$")
HEADING_RE = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
FENCE_RE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE_RE = re.compile(r"(`+)(.+?)\1", re.S)
# A cited path: bench/results/ followed by path characters; `{a,b}` alternatives expand.
CITE_RE = re.compile(r"bench/results/[\w./{},\-<>*]*[\w/}>*]")
NUM = r"\d+(?:\.\d+)?(?:[eE][-+−]?\d+)?"
DECIMAL_RE = re.compile(r"(?<![\w.+\-−±])(?<!arXiv )[+\-−±]?\d+\.\d{3,}(?![\w.]*\d)")
PERCENT_RE = re.compile(r"(?<![\w.])[+\-−±]\d+(?:\.\d+)?\s?%")
PVALUE_RE = re.compile(rf"(?<![\w@/])p(?:-values?)?\s*(?:=|<|≤|>|≥)?\s*({NUM}(?:\s*/\s*{NUM})*)")
FILE_NUMBER_RE = re.compile(r"\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


class RegistryError(ValueError):
    """A malformed block, a missing results file or section: one line naming the doc and line."""


# ----------------------------------------------------------------------------- blocks


@dataclass(frozen=True)
class Block:
    """One generated block of a doc: ``source`` (path from the root) and ``anchor`` (or None).

    ``start`` and ``end`` are the 0-based line numbers of the opening and closing markers.
    """

    source: str
    anchor: str | None
    start: int
    end: int

    @property
    def marker(self) -> str:
        return f"<!-- results: {self.source}{'#' + self.anchor if self.anchor else ''} -->"


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def find_blocks(text: str, name: str = "<doc>") -> list[Block]:
    """The generated blocks of a doc, in order; unbalanced or nested markers are an error."""
    blocks, open_at, open_m = [], None, None
    in_fence = False
    for i, line in enumerate(text.split("\n")):
        if FENCE_RE.match(line):
            in_fence = not in_fence
        if in_fence:
            continue
        m = OPEN_RE.match(line.strip())
        if m:
            if open_at is not None:
                raise RegistryError(
                    f"{name} line {i + 1}: results block opened inside the block of line {open_at + 1}"
                )
            open_at, open_m = i, m
        elif CLOSE_RE.match(line.strip()):
            if open_at is None:
                raise RegistryError(f"{name} line {i + 1}: '<!-- /results -->' without an opening marker")
            blocks.append(Block(open_m["path"], open_m["anchor"], open_at, i))
            open_at = None
        elif re.match(r"\s*<!--\s*/?\s*results", line):  # a marker line that did not parse
            raise RegistryError(
                f"{name} line {i + 1}: malformed marker, expected '<!-- results: bench/results/<file>.md[#<heading>] -->'"
            )
    if open_at is not None:
        raise RegistryError(f"{name} line {open_at + 1}: results block never closed with '<!-- /results -->'")
    return blocks


def section(text: str, anchor: str | None, name: str = "<file>") -> str:
    """The body a block shows: the whole ``text``, or the section under heading ``anchor``."""
    lines = text.split("\n")
    if anchor is None:
        return "\n".join(lines).strip("\n")
    headings = []  # (line index, heading text) outside fenced code
    in_fence = False
    for i, line in enumerate(lines):
        if FENCE_RE.match(line):
            in_fence = not in_fence
        elif not in_fence and (m := HEADING_RE.match(line)):
            headings.append((i, m[2]))
    hits = [k for k, (_, h) in enumerate(headings) if anchor in (h, slug(h))]
    if not hits:
        known = ", ".join(slug(h) for _, h in headings) or "none"
        raise RegistryError(f"{name}: no heading '#{anchor}' (headings: {known})")
    if len(hits) > 1:
        raise RegistryError(f"{name}: heading '#{anchor}' is ambiguous ({len(hits)} headings match)")
    k = hits[0]
    first = headings[k][0] + 1
    last = headings[k + 1][0] if k + 1 < len(headings) else len(lines)
    return "\n".join(lines[first:last]).strip("\n")


def _source(root: Path, block: Block, doc: str) -> Path:
    if not block.source.startswith(RESULTS_DIR + "/"):
        raise RegistryError(
            f"{doc} line {block.start + 1}: a results block must name a file under {RESULTS_DIR}/"
        )
    path = root / block.source
    if not path.is_file():
        raise RegistryError(f"{doc} line {block.start + 1}: {block.source} does not exist")
    return path


def render_doc(text: str, root: Path, name: str = "<doc>") -> str:
    """``text`` with every generated block re-rendered from its results file."""
    lines = text.split("\n")
    out, pos = [], 0
    for b in find_blocks(text, name):
        src = _source(root, b, name)
        body = section(src.read_text(encoding="utf-8"), b.anchor, b.source)
        out += lines[pos : b.start]
        out += [b.marker, "", *([body] if body else []), "", "<!-- /results -->"]
        pos = b.end + 1
    out += lines[pos:]
    return "\n".join(out)


def doc_files(root: Path) -> list[Path]:
    """The docs the registry covers: ``README.md`` and ``docs/*.md``."""
    return [p for p in [root / "README.md", *sorted((root / "docs").glob("*.md"))] if p.is_file()]


def out_of_date(docs: Iterable[Path], root: Path) -> list[Path]:
    """The docs whose generated blocks differ from what their results files render."""
    return [
        d
        for d in docs
        if render_doc(d.read_text(encoding="utf-8"), root, _rel(d, root)) != d.read_text(encoding="utf-8")
    ]


def write_docs(docs: Iterable[Path], root: Path) -> list[Path]:
    """Re-render every block in place; returns the docs that changed."""
    changed = []
    for d in docs:
        old = d.read_text(encoding="utf-8")
        new = render_doc(old, root, _rel(d, root))
        if new != old:
            d.write_text(new, encoding="utf-8")
            changed.append(d)
    return changed


# ----------------------------------------------------------------------------- numbers


@dataclass(frozen=True)
class Unbacked:
    """A result-like number of a doc that no cited results file contains."""

    doc: str
    line: int
    number: str
    cited: tuple[str, ...]

    def __str__(self) -> str:
        if self.number == "<missing file>":
            return f"{self.doc} line {self.line}: cites {self.cited[0]}, which does not exist"
        if not self.cited:
            return f"{self.doc} line {self.line}: {self.number}: its paragraph cites no {RESULTS_DIR}/ file"
        return f"{self.doc} line {self.line}: {self.number} is not in {', '.join(self.cited)}"


@dataclass(frozen=True)
class _Unit:
    line: int  # 1-based first line
    lines: list[str]
    cites: tuple[str, ...]
    is_table: bool


def _expand(path: str) -> list[str]:
    m = re.search(r"\{([^{}]*)\}", path)
    if not m:
        return [path.rstrip(".,")]
    return [q for alt in m[1].split(",") for q in _expand(path[: m.start()] + alt + path[m.end() :])]


def cited_paths(text: str) -> tuple[str, ...]:
    """The ``bench/results/`` paths a piece of doc text names (inline code included)."""
    found = []
    for m in CITE_RE.finditer(text):
        if "<" in m[0] or "*" in m[0]:  # a pattern (`compare_<preset>.md`), not a citation
            continue
        for p in _expand(m[0]):
            if p not in found:
                found.append(p)
    return tuple(found)


def _units(text: str, name: str) -> list[_Unit]:
    lines = text.split("\n")
    blocks = {b.start: b for b in find_blocks(text, name)}
    units: list[_Unit] = []
    cur: list[str] = []
    cur_start = 0

    def flush() -> None:
        if cur:
            joined = "\n".join(cur)
            units.append(
                _Unit(
                    cur_start + 1,
                    list(cur),
                    cited_paths(joined),
                    all(s.lstrip().startswith("|") for s in cur),
                )
            )
            cur.clear()

    i = 0
    while i < len(lines):
        line = lines[i]
        if i in blocks:  # a generated block: one unit that cites its own file
            flush()
            b = blocks[i]
            units.append(_Unit(i + 1, lines[i : b.end + 1], (b.source,), False))
            i = b.end + 1
            continue
        if FENCE_RE.match(line):  # fenced code: skipped
            flush()
            fence = FENCE_RE.match(line)[1]
            i += 1
            while i < len(lines) and not lines[i].lstrip().startswith(fence):
                i += 1
            i += 1
            continue
        if not line.strip() or HEADING_RE.match(line):
            flush()
            if line.strip():
                units.append(_Unit(i + 1, [line], cited_paths(line), False))
        else:
            if not cur:
                cur_start = i
            cur.append(line)
        i += 1
    flush()
    return units


def _blank(m: re.Match) -> str:
    return "".join("\n" if ch == "\n" else " " for ch in m[0])


def result_numbers(text: str) -> list[tuple[int, str]]:
    """``(offset, number)`` of the result-like numbers of a piece of prose.

    Inline code spans and HTML comments are skipped (blanked, so offsets stay those of ``text``).
    """
    text = re.sub(r"<!--.*?-->", _blank, text, flags=re.S)
    text = INLINE_CODE_RE.sub(_blank, text)
    found = {m.start(): m[0] for m in DECIMAL_RE.finditer(text)}
    found.update({m.start(): m[0] for m in PERCENT_RE.finditer(text)})
    num = re.compile(NUM)
    for m in PVALUE_RE.finditer(text):
        for part in num.finditer(m[1]):
            found.setdefault(m.start(1) + part.start(), part[0])
    return sorted(found.items())


def _value_and_tolerance(number: str) -> tuple[float, float]:
    """``|value|`` of a number as written and half a unit of its last written digit."""
    s = number.replace("−", "-").lstrip("+-±").rstrip("%").strip()
    mant, _, exp = s.lower().partition("e")
    decimals = len(mant.partition(".")[2])
    e = int(exp.replace("−", "-")) if exp else 0
    return abs(float(mant) * 10.0**e), 0.5 * 10.0 ** (e - decimals)


class _FileNumbers:
    """The sorted absolute values of every number in the results files read so far."""

    def __init__(self, root: Path):
        self.root = root
        self.cache: dict[str, list[float]] = {}

    def files(self, cited: str) -> list[Path]:
        p = self.root / cited
        if p.is_dir():
            return sorted(
                q for q in p.rglob("*") if q.is_file() and q.suffix in {".md", ".json", ".csv", ".txt"}
            )
        return [p] if p.is_file() else []

    def values(self, cited: str) -> list[float]:
        if cited not in self.cache:
            vals = []
            for f in self.files(cited):
                text = f.read_text(encoding="utf-8", errors="replace")
                vals += [abs(float(x)) for x in FILE_NUMBER_RE.findall(text)]
            self.cache[cited] = sorted(v for v in vals if math.isfinite(v))
        return self.cache[cited]

    def contains(self, cited: Sequence[str], number: str) -> bool:
        v, tol = _value_and_tolerance(number)
        tol *= 1 + 1e-9
        for c in cited:
            vals = self.values(c)
            k = bisect.bisect_left(vals, v - tol)
            if k < len(vals) and vals[k] <= v + tol:
                return True
        return False


def unbacked_numbers(text: str, root: Path, name: str = "<doc>") -> list[Unbacked]:
    """Every result-like number of ``text`` that no results file cited in its unit contains.

    A cited path that does not exist is reported too (as the number ``<missing file>``) when
    its unit has result-like numbers.
    """
    store = _FileNumbers(root)
    problems: list[Unbacked] = []
    units = _units(text, name)
    for k, u in enumerate(units):
        cites = u.cites
        prev = units[k - 1] if k else None
        if u.is_table and prev is not None and prev.line + len(prev.lines) + 1 >= u.line:
            cites = tuple(dict.fromkeys(cites + prev.cites))  # the caption right above the table
        body = "\n".join(u.lines)
        numbers = result_numbers(body)
        if numbers:  # a citation matters when it backs numbers: then it must exist
            for c in u.cites:
                if not store.files(c):
                    problems.append(Unbacked(name, u.line, "<missing file>", (c,)))
        for offset, num in numbers:
            if not store.contains(cites, num):
                problems.append(Unbacked(name, u.line + body.count("\n", 0, offset), num, cites))
    return problems


def records_command(path: Path) -> bool:
    """Whether a results file says which command wrote it.

    Markdown/text: a line starting with ``Command:`` or, as a study's provenance line has it,
    ``- Made by `<command>```; JSON: a key ``command`` at any depth.
    """
    text = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix == ".json":

        def has(obj) -> bool:
            if isinstance(obj, dict):
                return "command" in obj or any(has(v) for v in obj.values())
            if isinstance(obj, list):
                return any(has(v) for v in obj)
            return False

        try:
            return has(json.loads(text))
        except json.JSONDecodeError:
            return False
    starts = ("command:", "made by `")
    return any(line.lstrip("-*_ ").lower().startswith(starts) for line in text.split("\n"))


def cited_files(docs: Iterable[Path], root: Path) -> list[Path]:
    """Every results file the docs cite (directories expanded), sorted."""
    store = _FileNumbers(root)
    out = set()
    for d in docs:
        text = d.read_text(encoding="utf-8")
        for b in find_blocks(text, _rel(d, root)):
            out.add(root / b.source)
        for c in cited_paths(text):
            out.update(store.files(c))
    return sorted(out)


# ----------------------------------------------------------------------------- CLI


def _rel(p: Path, root: Path) -> str:
    try:
        return str(p.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(p)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m egra.experiments.registry",
        description="Re-render the results blocks of README.md and docs/*.md from bench/results/ files.",
    )
    ap.add_argument("docs", nargs="*", type=Path, help="docs to process (default: README.md and docs/*.md)")
    ap.add_argument("--root", type=Path, default=Path.cwd(), help="repository root (default: .)")
    ap.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 when a block differs from its file"
    )
    ap.add_argument(
        "--numbers", action="store_true", help="also check that every result-like number is in a cited file"
    )
    args = ap.parse_args(argv)
    root = args.root
    docs = args.docs or doc_files(root)
    try:
        if args.check:
            stale = out_of_date(docs, root)
            for d in stale:
                print(
                    f"{_rel(d, root)}: a results block differs from its file (run `make results`)",
                    file=sys.stderr,
                )
            status = 1 if stale else 0
        else:
            for d in write_docs(docs, root):
                print(f"re-rendered {_rel(d, root)}")
            status = 0
        if args.numbers:
            problems = [
                p for d in docs for p in unbacked_numbers(d.read_text(encoding="utf-8"), root, _rel(d, root))
            ]
            for p in problems:
                print(p, file=sys.stderr)
            status = status or (1 if problems else 0)
    except RegistryError as e:
        print(f"results: {e}", file=sys.stderr)
        return 2
    return status


if __name__ == "__main__":
    sys.exit(main())
