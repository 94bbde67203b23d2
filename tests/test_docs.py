"""README.md and docs/METHOD.md quote measured numbers only in generated blocks, and the committed blocks are
what the committed tables regenerate."""
import json
import re
import shutil
import subprocess

import pytest

from conftest import REPO
from mixedae_core.lab import provenance
from mixedae_core.lab.docblocks import BLOCKS, DOCS, DocBlockError, blocks, headline, render, stale_blocks
from mixedae_core.lab.reproduce import _transfer_cost_line

RESULTS = REPO / "results"


def copy_docs(tmp_path):
    """The committed documents under tmp_path, laid out as in the repository (the tables stay where they are)."""
    for doc in DOCS:
        (tmp_path / doc).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / doc, tmp_path / doc)
    return tmp_path


def test_the_committed_blocks_are_what_the_committed_tables_regenerate():
    assert stale_blocks(REPO) == {}, "run `make reproduce` (or mixedae_core.lab.docblocks.write_docs) and commit"


def test_a_number_edited_by_hand_inside_a_block_is_found(tmp_path):
    root = copy_docs(tmp_path)
    for doc in DOCS:
        text = (root / doc).read_text()
        for name, start, end in blocks(text, doc):
            number = re.search(r"\d\.(\d)", text[start:end])  # the first decimal's first decimal place
            assert number, f"block {name} of {doc} quotes no measured number"
            at = start + number.start(1)
            (root / doc).write_text(text[:at] + str((int(text[at]) + 1) % 10) + text[at + 1:])
            assert stale_blocks(root, RESULTS) == {doc: [name]}, f"{doc}: a hand edit of block {name} went unseen"
        (root / doc).write_text(text)
    assert stale_blocks(root, RESULTS) == {}


def test_every_generator_fills_a_block_and_every_block_links_files_that_exist():
    used = set()
    for doc in DOCS:
        text = render((REPO / doc).read_text(), RESULTS, doc)
        for name, start, end in blocks(text, doc):
            used.add(name)
            targets = re.findall(r"\]\(([^)]+)\)", text[start:end])
            assert targets, f"{doc}: block {name} names no table"
            for target in targets:
                assert ((REPO / doc).parent / target).exists(), f"{doc}: block {name} links {target}, which is missing"
    assert used == set(BLOCKS), f"generators no document uses: {set(BLOCKS) - used}"


@pytest.mark.parametrize("text, message", [
    ("<!-- generated: nosuch (from nowhere) -->\nx\n<!-- end generated: nosuch -->\n", "has no generator"),
    ("<!-- generated: headline -->\nx\n", "is not closed"),
    ("<!-- generated: headline -->\nx\n<!-- end generated: step-cost -->\n", "is not closed"),
    ("<!-- generated: headline -->\n<!-- generated: step-cost -->\n<!-- end generated: step-cost -->\n"
     "<!-- end generated: headline -->\n", "is not closed"),
    ("text\n<!-- end generated: headline -->\n", "closes no block"),
])
def test_unknown_or_unbalanced_blocks_are_refused_with_the_line(text, message):
    with pytest.raises(DocBlockError, match=message) as info:
        render(text, RESULTS, "README.md")
    assert "README.md, line " in str(info.value)


def test_a_document_in_a_subfolder_links_the_tables_from_there():
    text = "<!-- generated: step-cost -->\n<!-- end generated: step-cost -->\n"
    assert "](results/tables/bench.csv)" in render(text, RESULTS, "README.md")
    assert "](../results/tables/bench.csv)" in render(text, RESULTS, "docs/METHOD.md")


def test_the_headline_block_quotes_the_first_preset_whose_notebook_01_has_run(tmp_path):
    results = tmp_path / "results"
    shutil.copytree(REPO / "results", results, ignore=shutil.ignore_patterns("long"))
    assert "`cpu` preset" in headline(results)
    for kind in ("tables", "runs"):  # the long preset (before cpu in PRESETS) gets notebook 01's tables
        shutil.copytree(results / kind / "cpu", results / kind / "long")
    text = headline(results)
    assert "`long` preset" in text and "results/tables/long/01_transfer.csv" in text and "`cpu`" not in text


def test_the_reproduce_time_block_quotes_a_fresh_clone_only_once_one_was_timed(tmp_path):
    results = tmp_path / "results"
    shutil.copytree(RESULTS / "tables" / "cpu", results / "tables" / "cpu")
    shutil.copy(RESULTS / "tables" / "bench.csv", results / "tables" / "bench.csv")
    (results / "tables" / "cpu" / "fresh_clone.json").unlink(missing_ok=True)
    text = "<!-- generated: reproduce-time -->\n<!-- end generated: reproduce-time -->\n"
    assert "fresh_clone.json" not in render(text, results, "README.md")
    campaign = {"planned": 23, "recorded_before": 14, "trained": [{}] * 8, "resumed": [{}], "wall_seconds": 936}
    (results / "tables" / "cpu" / "fresh_clone.json").write_text(json.dumps({
        "commit": "abc", "device": "a CPU", "date": "2026-01-02T00:00:00", "setup_seconds": 270,
        "reproduce_seconds": 1110, "campaign": campaign, "notebook_seconds": {"a": 100, "b": 50}}))
    block = render(text, results, "README.md")
    for quoted in ("commit abc", "2026-01-02 on a CPU", "took 4.5 min", "PRESET=cpu` 18.5 min", "14 of 23",
                   "trained 9 runs", "in 15.6 min", "took 2.5 min.", "(results/tables/cpu/fresh_clone.json)"):
        assert quoted in block, quoted


def test_a_render_rewriting_results_and_the_docs_leaves_the_commit_clean_but_a_code_edit_does_not(tmp_path,
                                                                                                   monkeypatch):
    """Runs and fresh-clone timings stamp git_commit() after a render has rewritten results/ and the generated
    blocks; only a change to anything else is '+dirty'."""
    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    written = ["results/tables/x.csv", *DOCS]
    for path in [*written, "mixedae_core/model.py"]:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("before\n")
    git("init", "-q")
    git("add", "-A")
    git("commit", "-q", "-m", "c")
    monkeypatch.setattr(provenance, "REPO", tmp_path)
    for path in written:
        (tmp_path / path).write_text("after\n")
    assert "+dirty" not in provenance.git_commit()
    (tmp_path / "mixedae_core/model.py").write_text("after\n")
    assert provenance.git_commit().endswith("+dirty")


def test_results_readme_states_what_the_paper_metrics_cost_per_record(tmp_path):
    for name, seconds in (("a", {"frozen": 30, "transfer_per_seed": 300}), ("b", {"transfer_per_seed": 600}),
                          ("c", {"frozen": 20}), ("d", None)):
        (tmp_path / "runs" / "cpu" / name).mkdir(parents=True)
        record = {"scores": {}} if seconds is None else {"scores": {}, "seconds": seconds}
        (tmp_path / "runs" / "cpu" / name / "eval.json").write_text(json.dumps(record))
    assert "7.5 min per run (median; 5.0–10.0 over 2 records" in _transfer_cost_line(tmp_path, "cpu")
    assert _transfer_cost_line(tmp_path, "long") == ""
