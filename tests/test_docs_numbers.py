"""Every number in the docs comes from a results file: the registry's two checks, and their unit tests.

The rule (``egra.experiments.registry``; also in docs/experiments.md, "Numbers in the docs"):
README.md and docs/*.md are cut into units — paragraphs (separated by blank lines), each
generated block ``<!-- results: bench/results/<file>[#<heading>] -->`` … ``<!-- /results -->``
as a whole, and fenced code blocks, which are skipped; inline code spans are skipped too.
A number that looks like a result — a decimal with at least three digits after the point
(not an arXiv id), a signed percentage (``+4.2%``, ``−3.6%``, ``±5%``), or a p-value (every
number after a standalone ``p`` / ``p-value``, ``/``-separated lists included) — must appear,
at the precision written and regardless of sign, in a results file that its unit cites by
path (``bench/results/...``; ``{md,json}`` alternatives expand, a directory stands for its
files); a table may use the paths of the paragraph right above it, and a generated block
cites its own file. Generated blocks must equal what their file renders (``make results``
re-renders them, ``--check`` fails on a difference), and every cited results file must say
which command wrote it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from egra.experiments import registry as reg

ROOT = Path(__file__).resolve().parents[1]
DOCS = reg.doc_files(ROOT)

# Results files the docs cite that were written before results files recorded their command.
# Each leaves this list when it is re-run by a command that records itself; the test below
# fails when one of them already records its command, so the list only shrinks.
NO_COMMAND_YET = {
    "bench/results/backbones_small/report.md",
    "bench/results/backbone_epochs_small/report.md",
    "bench/results/ddp_traffic.json",
    "bench/results/batch_subsets.json",
    "bench/results/scale.json",
    "bench/results/scale_quick.json",
}


# ------------------------------------------------------------------ the repository's docs


def test_docs_exist_and_readme_is_an_entry_point():
    names = {p.name for p in DOCS}
    assert {"README.md", "method.md", "data.md", "configuration.md", "experiments.md"} <= names
    assert {"multi-gpu.md", "performance.md", "findings.md"} <= names
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 300


def test_results_blocks_match_their_files():
    """`make results` would change nothing: every block equals what its file renders."""
    stale = reg.out_of_date(DOCS, ROOT)
    assert not stale, f"run `make results`: {[str(p.relative_to(ROOT)) for p in stale]}"
    assert sum(len(reg.find_blocks(p.read_text(encoding="utf-8"))) for p in DOCS) >= 5


def test_every_result_number_in_the_docs_is_in_a_cited_file():
    problems = [
        str(p)
        for d in DOCS
        for p in reg.unbacked_numbers(d.read_text(encoding="utf-8"), ROOT, str(d.relative_to(ROOT)))
    ]
    assert not problems, "numbers without a results file:\n" + "\n".join(problems)


def test_cited_results_files_record_their_command():
    cited = {str(p.relative_to(ROOT)) for p in reg.cited_files(DOCS, ROOT)}
    text_files = {c for c in cited if Path(c).suffix in {".md", ".json", ".csv", ".txt"}}
    missing = sorted(c for c in text_files - NO_COMMAND_YET if not reg.records_command(ROOT / c))
    assert not missing, f"results files that do not say which command wrote them: {missing}"
    now_recorded = sorted(c for c in NO_COMMAND_YET & cited if reg.records_command(ROOT / c))
    assert not now_recorded, f"remove from NO_COMMAND_YET: {now_recorded}"


def test_docs_cite_no_document_users_lack():
    # built from parts, so that a grep of the repository for these names finds nothing, this test included
    names = ("egra" + "-method", "mmrec" + "-protocol", "freedom")
    pattern = re.compile("|".join(re.escape(n + ".md") for n in names) + "|shared/" + "reference")
    roots = ["src", "conf", "bench", "tests", "notebooks", "docs", "README.md"]
    hits = []
    for r in roots:
        paths = [ROOT / r] if (ROOT / r).is_file() else sorted((ROOT / r).rglob("*"))
        for p in paths:
            if p.is_file() and p.suffix in {".py", ".md", ".yaml", ".json", ".ipynb", ".sh", ".txt"}:
                if p == Path(__file__) or ".egg-info" in str(p):
                    continue
                if pattern.search(p.read_text(encoding="utf-8", errors="replace")):
                    hits.append(str(p.relative_to(ROOT)))
    assert not hits


# ------------------------------------------------------------------ the checker itself


@pytest.fixture
def root(tmp_path: Path) -> Path:
    res = tmp_path / "bench" / "results"
    res.mkdir(parents=True)
    (res / "a.md").write_text(
        "# Study A\n\nCommand: `python bench/a.py`\n\n"
        "| model | Recall@20 |\n|---|---:|\n| MGCN | 0.1453 ± 0.0025 |\n| EGRA | 0.1406 |\n\n"
        "## Tests\n\np (t-test) 0.0731, users 6.96e-06, gain +4.2%\n\n### Deeper\n\nnested 0.5000\n",
        encoding="utf-8",
    )
    (res / "b.json").write_text('{"command": "python b.py", "diff": -0.0047, "p": 0.6125}', encoding="utf-8")
    return tmp_path


def _numbers(text: str) -> list[str]:
    return [n for _, n in reg.result_numbers(text)]


def test_result_numbers_are_what_the_rule_says():
    text = (
        "Recall 0.1453 vs 0.14, −0.0047 and 12.345; +4.2% and −3.6% but not 17%; "
        "p 0.073 / 0.13, users p = 7e-6; arXiv 2508.16170; `model.lambda_max=0.001` in code"
    )
    assert _numbers(text) == ["0.1453", "−0.0047", "12.345", "+4.2%", "−3.6%", "0.073", "0.13", "7e-6"]


def test_planted_unbacked_number_fails(root: Path):
    ok = "MGCN reaches 0.1453 on `small` (`bench/results/a.md`).\n"
    assert reg.unbacked_numbers(ok, root) == []
    planted = "MGCN reaches 0.1453 and EGRA 0.1521 on `small` (`bench/results/a.md`).\n"
    problems = reg.unbacked_numbers(planted, root)
    assert [(p.number, p.line) for p in problems] == [("0.1521", 1)]
    assert "0.1521" in str(problems[0]) and "bench/results/a.md" in str(problems[0])


def test_a_number_needs_a_citation_in_its_own_paragraph(root: Path):
    text = "Cited here: `bench/results/a.md`.\n\nBut this paragraph says 0.1453 without one.\n"
    assert [p.number for p in reg.unbacked_numbers(text, root)] == ["0.1453"]


def test_precision_sign_pvalues_and_percentages(root: Path):
    text = (
        "From `bench/results/a.md` and `bench/results/b.json`: 0.145 (rounded 0.1453), +0.0047 "
        "(the file has −0.0047), 0.613 (0.6125), p 0.073 and p 7e-6, and +4.2%.\n"
    )
    assert reg.unbacked_numbers(text, root) == []
    wrong = "From `bench/results/a.md`: 0.146, p 0.075, and +4.3%.\n"
    assert [p.number for p in reg.unbacked_numbers(wrong, root)] == ["0.146", "0.075", "+4.3%"]


def test_code_is_exempt_and_brace_paths_expand(root: Path):
    text = (
        "Set `model.lambda_max=0.1234` as in `bench/results/{a.md,b.json}`: −0.0047.\n\n"
        "```bash\negra-train model.beta=0.1234\n```\n"
    )
    assert reg.unbacked_numbers(text, root) == []


def test_a_table_may_use_its_caption(root: Path):
    text = "Caption (`bench/results/a.md`):\n\n| model | R |\n|---|---:|\n| EGRA | 0.1406 |\n| X | 0.9999 |\n"
    assert [(p.number, p.line) for p in reg.unbacked_numbers(text, root)] == [("0.9999", 6)]


def test_a_missing_cited_file_is_reported(root: Path):
    text = "See `bench/results/nope.md`: 0.1453.\n"
    numbers = [p.number for p in reg.unbacked_numbers(text, root)]
    assert numbers == ["<missing file>", "0.1453"]


# ------------------------------------------------------------------ generated blocks


def test_section_is_the_text_under_one_heading(root: Path):
    text = (root / "bench/results/a.md").read_text(encoding="utf-8")
    assert reg.section(text, "tests") == "p (t-test) 0.0731, users 6.96e-06, gain +4.2%"
    assert reg.section(text, "Tests") == reg.section(text, "tests")
    assert reg.section(text, "study-a").startswith("Command:")
    assert reg.section(text, "study-a").endswith("| EGRA | 0.1406 |")
    assert reg.section(text, None) == text.strip("\n")
    assert reg.slug("Fair comparison on `small`: defaults + 5 trials, 5 seeds") == (
        "fair-comparison-on-small-defaults--5-trials-5-seeds"
    )
    with pytest.raises(reg.RegistryError, match="no heading '#nope'"):
        reg.section(text, "nope")


def test_render_and_check_round_trip(root: Path):
    doc = root / "docs" / "x.md"
    doc.parent.mkdir()
    doc.write_text(
        "Intro.\n\n<!-- results: bench/results/a.md#tests -->\nstale 0.1111\n<!-- /results -->\n\nAfter.\n",
        encoding="utf-8",
    )
    assert reg.out_of_date([doc], root) == [doc]
    assert reg.main(["--root", str(root), "--check", str(doc)]) == 1
    assert reg.main(["--root", str(root), str(doc)]) == 0
    assert doc.read_text(encoding="utf-8") == (
        "Intro.\n\n<!-- results: bench/results/a.md#tests -->\n\n"
        "p (t-test) 0.0731, users 6.96e-06, gain +4.2%\n\n<!-- /results -->\n\nAfter.\n"
    )
    assert reg.main(["--root", str(root), "--check", "--numbers", str(doc)]) == 0
    # The block's numbers are backed by its own file; a changed results file makes it stale.
    assert reg.unbacked_numbers(doc.read_text(encoding="utf-8"), root) == []
    (root / "bench/results/a.md").write_text("## Tests\n\np 0.5\n", encoding="utf-8")
    assert reg.main(["--root", str(root), "--check", str(doc)]) == 1


def test_malformed_blocks_are_one_line_errors(root: Path, capsys):
    for text, msg in [
        ("<!-- results: bench/results/a.md -->\nno end\n", "never closed"),
        ("<!-- /results -->\n", "without an opening marker"),
        ("<!-- results: bench/results/a.md -->\n<!-- results: bench/results/a.md -->\n", "opened inside"),
        ("<!-- results bench/results/a.md -->\n", "malformed marker"),
    ]:
        with pytest.raises(reg.RegistryError, match=msg):
            reg.find_blocks(text, "d.md")
    doc = root / "y.md"
    doc.write_text("<!-- results: bench/results/gone.md -->\n<!-- /results -->\n", encoding="utf-8")
    assert reg.main(["--root", str(root), "--check", str(doc)]) == 2
    assert "bench/results/gone.md does not exist" in capsys.readouterr().err


def test_records_command(root: Path):
    assert reg.records_command(root / "bench/results/a.md")
    assert reg.records_command(root / "bench/results/b.json")
    (root / "bench/results/c.json").write_text('{"x": [{"y": 1}]}', encoding="utf-8")
    assert not reg.records_command(root / "bench/results/c.json")
    # a study's protocol names its command in a "Made by" bullet; a line merely mentioning one does not count
    (root / "bench/results/d.md").write_text(
        "## Protocol\n\n- Made by `egra-compare dataset=tiny` at commit abc\n"
    )
    assert reg.records_command(root / "bench/results/d.md")
    (root / "bench/results/e.md").write_text("These tables were made by hand.\n")
    assert not reg.records_command(root / "bench/results/e.md")
