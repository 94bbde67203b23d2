"""The measured numbers of README.md and docs/METHOD.md, regenerated from the committed tables.

A number typed by hand goes stale the day its table is regenerated. So the docs quote measured numbers only
inside generated blocks, which `make reproduce` rewrites from results/ and a test compares with what the
committed tables give:

    <!-- generated: headline (from results/tables; `make reproduce` rewrites it) -->
    ...anything here is replaced...
    <!-- end generated: headline -->

BLOCKS maps a block's name to the function that writes its body from a results/ folder. Bodies link their
tables relative to the repository root; `render` rebases the links for a document in a subfolder. Speed is
quoted as ratios of step times measured in one run (bench.csv): absolute img/s do not carry across machines.
"""
import io
import json
import re
from pathlib import Path

import pandas as pd

from ..config import PRESETS
from ..runfiles import write_text_atomic
from .provenance import DOCS, REPO

METHODS = {"mae": "MAE", "naive": "naive mixing", "mixedae": "MixedAE"}
START = re.compile(r"<!-- generated: (?P<name>[\w-]+)\b[^>]*-->")
END = re.compile(r"<!-- end generated: (?P<name>[\w-]+) -->")


class DocBlockError(ValueError):
    """A document's generated blocks cannot be read: unknown name or unbalanced markers."""


# ------------------------------------------------------------------------------------------ tables
def read_table(path: Path) -> tuple[pd.DataFrame, dict]:
    """(rows, provenance) of a table written by a notebook: leading '# key: value' lines, then CSV."""
    lines = path.read_text().splitlines(keepends=True)
    meta = dict(line[2:].strip().split(": ", 1) for line in lines if line.startswith("# "))
    body = "".join(line for line in lines if not line.startswith("#"))
    return pd.read_csv(io.StringIO(body)), meta


def link(path: str) -> str:
    """A markdown link to a file of the repository, by its path from the root."""
    return f"[{path}]({path})"


def pct(values: pd.Series) -> str:
    """Percent, mean ± std over seeds (sample std, as the claims tables give it)."""
    mean = f"{100 * values.mean():.1f}"
    return f"{mean} ± {100 * values.std():.1f}" if len(values) > 1 else mean


def bench_ratios(results: Path) -> dict[str, dict]:
    """{device: {'dtype', 'commit', variant: step time / MAE's}} from bench.csv's preset-model rows in the
    precision the preset trains in on that device; also the range of bf16 autocast steps over fp32 ones."""
    bench = pd.read_csv(results / "tables" / "bench.csv")
    preset_rows = bench[bench["benchmark"].str.endswith("preset model")]
    ratios = {}
    for device, rows in preset_rows.groupby("device", sort=False):
        trained = rows[rows["preset_path"].astype(bool)].set_index("variant")
        bf16 = rows[rows["dtype"].str.startswith("bf16")]["ratio_to_fp32"].dropna()
        ratios[device] = {"dtype": trained["dtype"].iloc[0], "commit": trained["commit"].iloc[0],
                          **trained["ratio_to_mae"].to_dict(),
                          "bf16_to_fp32": (bf16.min(), bf16.max()) if len(bf16) else None}
    return ratios


# ------------------------------------------------------------------------------------------ blocks
def headline_preset(results: Path) -> str:
    """The first preset (in PRESETS' order: the headline first) whose notebook 01 has run: the README's headline."""
    ready = [p for p in PRESETS if PRESETS[p].committed and (results / "tables" / p / "01_transfer.csv").exists()]
    if not ready:
        raise DocBlockError(f"no preset's notebook 01 has run in {results}: the headline has no table to quote")
    return ready[0]


def headline(results: Path) -> str:
    """README: transfer, recognition and step cost of the three methods on the headline preset."""
    preset = headline_preset(results)
    tables, linked = results / "tables" / preset, f"results/tables/{preset}"  # read here, linked from the root
    transfer, meta = read_table(tables / "01_transfer.csv")
    baselines = read_table(tables / "01_baselines.csv")[0].set_index("baseline")
    by_method = {m: transfer[transfer["method"] == m] for m in METHODS}
    # the evaluation recipe the records were scored with, read from a record rather than from today's preset
    recipe = json.loads((results / "runs" / preset / transfer["run"].iloc[0] / "eval.json").read_text())["eval"]
    seeds = ", ".join(str(s) for s in sorted(transfer["seed"].unique()))
    rows = [f"| `{preset}` preset, mean ± std over seeds {seeds} | MAE | naive mixing | MixedAE | random init "
            "| raw pixels |", "|---|---|---|---|---|---|"]
    for column, label in (("knn_cls", "kNN [CLS], %"), ("probe_cls", "linear probe [CLS], %")):
        pixels = "knn_pixels" if column == "knn_cls" else "probe_pixels"
        rows.append(f"| {label} | " + " | ".join(pct(by_method[m][column]) for m in METHODS)
                    + f" | {100 * baselines.loc['random_init', column]:.1f}"
                    f" | {100 * baselines.loc['raw_pixels', pixels]:.1f} |")
    sources = ["01_transfer.csv", "01_baselines.csv"]
    designs_path = tables / "03_recognition_designs.csv"
    if designs_path.exists():  # the headline's own MixedAE runs, which notebook 03 tabulates beside other designs
        designs = read_table(designs_path)[0]
        acc = designs[designs["run"].isin(by_method["mixedae"]["run"])]["topk_acc"]
        rows.append(f"| TopK accuracy, mean over layers (chance {designs['topk_acc_chance'].iloc[0]:.3f}) "
                    f"| – | – | {acc.mean():.3f} ± {acc.std():.3f} | – | – |")
        sources.append("03_recognition_designs.csv")
    for device, r in bench_ratios(results).items():
        rows.append(f"| training step, × MAE's ({device}, {r['dtype']}, commit {r['commit']}) | 1.00 "
                    f"| {r['naive']:.2f} | {r['mixedae']:.2f} (full mixing {r['mixedae_full']:.2f}) | – | – |")
    recipe_text = (f"{recipe['train_subset'] or 'all'} training and {recipe['test_subset'] or 'all'} test images")
    return (f"From {', '.join(link(f'{linked}/{name}') for name in sources)} (commit {meta['commit']}) and "
            f"{link('results/tables/bench.csv')}. kNN and linear probe on the frozen encoder, {recipe_text}. "
            f"Each claim with its p-value and verdict: {link('results/README.md')}.\n\n" + "\n".join(rows))


def reproduce_time(results: Path) -> str:
    """README: what `make reproduce PRESET=cpu` cost on the machine of the committed records."""
    campaigns = json.loads((results / "tables/cpu/campaign_log.json").read_text())
    # a campaign that found no record trained (or re-evaluated) the whole experiment table
    whole = [c for c in campaigns if c["recorded_before"] == 0]
    if not whole:
        raise DocBlockError("reproduce-time: no campaign of results/tables/cpu/campaign_log.json started from no "
                            "record")
    whole = whole[-1]
    notebooks = json.loads((results / "tables/cpu/reproduce_log.json").read_text())
    full_over_compose = {d: r["mixedae_full"] / r["mixedae"] for d, r in bench_ratios(results).items()}
    evaluated = (f" and {len(whole['evaluated'])} evaluated (already trained in the run cache)"
                 if whole["evaluated"] else "")
    steps = ", ".join(f"{x:.1f}× a compose step on {d}" for d, x in full_over_compose.items())
    sources = ", ".join(link(f"results/tables/{name}") for name in
                        ("cpu/campaign_log.json", "cpu/reproduce_log.json", "bench.csv"))
    return (f"`make reproduce PRESET=cpu` as committed: its last campaign that started from no record (commit "
            f"{whole['provenance']['commit']}), {whole['workers']} side by side on {whole['provenance']['device']}, "
            f"took {whole['wall_seconds'] / 60:.0f} min: {len(whole['trained'])} runs trained{evaluated}; the "
            f"notebooks took {sum(notebooks.values()) / 60:.1f} min. The slowest run is MixedAE's full mode: its "
            f"step takes {steps}. From {sources}; every campaign behind the records: {link('results/README.md')}."
            + fresh_clone_time(results))


def fresh_clone_time(results: Path) -> str:
    """README: what scripts/time_fresh_clone.sh measured, when it has run: the cost to a user who clones the repo."""
    path = results / "tables/cpu/fresh_clone.json"
    if not path.exists():
        return ""
    clone = json.loads(path.read_text())
    campaign = clone["campaign"]
    retrained = len(campaign["trained"]) + len(campaign["resumed"])
    trained = (f"trained {retrained} runs (those whose record the code has outdated, or whose model is not kept)"
               if retrained else "trained no run")
    return (f" A clone of commit {clone['commit']} in an empty folder (the committed records; no run cache, no "
            f"`.venv`; this machine's pip cache), {clone['date'][:10]} on {clone['device']}: `make venv data` took "
            f"{clone['setup_seconds'] / 60:.1f} min, `make reproduce PRESET=cpu` {clone['reproduce_seconds'] / 60:.1f}"
            f" min, in which the campaign found {campaign['recorded_before']} of {campaign['planned']} records "
            f"current and {trained} in {campaign['wall_seconds'] / 60:.1f} min and the notebooks took "
            f"{sum(clone['notebook_seconds'].values()) / 60:.1f} min. From "
            f"{link('results/tables/cpu/fresh_clone.json')} (scripts/time_fresh_clone.sh).")


def recognition_designs(results: Path) -> str:
    """METHOD §6: TopK accuracy, homologous loss, reconstruction and kNN of each recognition design."""
    designs, meta = read_table(results / "tables/cpu/03_recognition_designs.csv")
    baselines = read_table(results / "tables/cpu/01_baselines.csv")[0].set_index("baseline")
    layers = [c for c in designs if c.startswith("topk_acc_layer")]  # in block order, as the notebook wrote them
    rows = ["| design | seeds | TopK accuracy (mean; per layer) | `loss_hc` (chance → perfect) | `loss_rec` "
            "| kNN [CLS] |", "|---|---|---|---|---|---|"]
    for design, d in designs.groupby("design", sort=False):
        per_layer = " ".join(f"{d[c].mean():.2f}" for c in layers)
        rows.append(f"| {design} | {len(d)} | {d['topk_acc'].mean():.3f}; {per_layer} "
                    f"| {d['loss_hc_last'].mean():.2f} "
                    f"({d['loss_hc_chance'].iloc[0]:.2f} → {d['loss_hc_perfect'].iloc[0]:.2f}) "
                    f"| {d['loss_rec'].mean():.3f} | {pct(d['knn_cls'])} |")
    chance = designs["topk_acc_chance"].iloc[0]
    return (f"From {link('results/tables/cpu/03_recognition_designs.csv')} (notebook 03, commit "
            f"{meta['commit']}): the `cpu` model, one epoch of the 60k training images, TopK accuracy and "
            f"`loss_hc` at the last logged step (TopK chance {chance:.3f}), kNN [CLS] on the cpu evaluation "
            f"recipe (random init {100 * baselines.loc['random_init', 'knn_cls']:.1f}, "
            f"{link('results/tables/cpu/01_baselines.csv')}); means over the seeds of each row.\n\n" + "\n".join(rows))


def step_cost(results: Path) -> str:
    """METHOD §6 Cost: each method's step over MAE's, and bf16's over fp32's, per benchmarked device."""
    lines = [f"From {link('results/tables/bench.csv')} (`make bench`: medians of per-round ratios of step times "
             "measured alternately in one run):", ""]
    for device, r in bench_ratios(results).items():
        bf16 = r["bf16_to_fp32"]
        lines.append(f"- {device}, {r['dtype']} (commit {r['commit']}): MixedAE's step {r['mixedae']:.2f}× "
                     f"MAE's, naive mixing's {r['naive']:.2f}×, full mixing's {r['mixedae_full']:.2f}× "
                     f"({r['mixedae_full'] / r['mixedae']:.1f}× compose's)"
                     + (f"; each method's bf16 autocast step {bf16[0]:.1f}–{bf16[1]:.1f}× its fp32 step." if bf16
                        else "."))
    return "\n".join(lines)


# An epoch of CIFAR-10's training images: the unit `dataset_costs` prices a training step in (an ImageNet subset of
# n images takes n / 50,000 times as long). bench.csv's models by the preset that trains them.
EPOCH_IMAGES = 50_000
BENCH_MODELS = {"gpu preset model": "`gpu` preset, 32 px", "cpu preset model": "`cpu` preset, 32 px",
                "ViT-B/16 224 px": "`imagenet` preset's ViT-B/16, 224 px"}


def duration(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def dataset_costs(results: Path) -> str:
    """README, "Your own data": the time per 50,000 training images and peak memory of each method's step, per
    benchmarked model and device, in the precision the preset trains in there (bench.csv's `preset_path` rows)."""
    bench = pd.read_csv(results / "tables" / "bench.csv")
    trained = bench[bench["preset_path"].astype(bool)]
    rows = ["| device, precision (commit) | model | batch | " + " | ".join(METHODS.values()) + " | memory |",
            "|---|---|---|" + "---|" * len(METHODS) + "---|"]
    for (device, model), r in trained.groupby(["device", "benchmark"], sort=False):
        r = r.set_index("variant")
        cells = [duration(EPOCH_IMAGES / r.loc[m, "img_per_s"]) + (
            "" if pd.isna(r.loc[m, "peak_memory_mib"]) else f", {r.loc[m, 'peak_memory_mib']:.0f} MiB")
            if m in r.index else "–" for m in METHODS]
        memory = r["memory_kind"].dropna()
        rows.append(f"| {device}, {r['dtype'].iloc[0]} ({r['commit'].iloc[0]}) | {BENCH_MODELS.get(model, model)} "
                    f"| {r['batch'].iloc[0]} | " + " | ".join(cells) + f" | {memory.iloc[0] if len(memory) else '–'} |")
    gpu = "" if (trained["benchmark"] == "gpu preset model").any() else (
        " No row of the `gpu` preset's model yet: it has not been benchmarked on a GPU. `make bench` on your GPU "
        "adds its rows (and ViT-B/16's) to the table, and `make reproduce` rewrites this block from them.")
    return (f"From {link('results/tables/bench.csv')} (`make bench`): one device's training step, data on the "
            f"device, at the batch shown: the time per {EPOCH_IMAGES:,} training images (one CIFAR-10 epoch) and "
            f"the peak memory.{gpu}\n\n" + "\n".join(rows))


BLOCKS = {"headline": headline, "reproduce-time": reproduce_time,
          "recognition-designs": recognition_designs, "step-cost": step_cost, "dataset-costs": dataset_costs}


# ------------------------------------------------------------------------------------------ documents
def blocks(text: str, doc: str = "document") -> list[tuple[str, int, int]]:
    """(name, start, end) of each generated block's body in `text`; every marker must pair with the next."""
    markers = sorted([(m.start(), m.end(), m["name"], "start") for m in START.finditer(text)]
                     + [(m.start(), m.end(), m["name"], "end") for m in END.finditer(text)])
    found = []
    for i in range(0, len(markers), 2):
        _, body_start, name, kind = markers[i]
        after = markers[i + 1] if i + 1 < len(markers) else None  # the marker that must close this block
        line = text.count("\n", 0, markers[i][0]) + 1
        if kind != "start":
            raise DocBlockError(f"{doc}, line {line}: '<!-- end generated: {name} -->' closes no block")
        if after is None or after[3] != "end" or after[2] != name:
            raise DocBlockError(f"{doc}, line {line}: block '{name}' is not closed by "
                                f"'<!-- end generated: {name} -->' before the next marker")
        if name not in BLOCKS:
            raise DocBlockError(f"{doc}, line {line}: block '{name}' has no generator "
                                f"(known blocks: {', '.join(BLOCKS)})")
        found.append((name, body_start, after[0]))
    return found


def render(text: str, results: Path, doc: str = "README.md") -> str:
    """`text` with every generated block's body written anew from `results`; `doc` is the document's path
    from the repository root, so that the bodies' links resolve from where it sits."""
    up = "../" * doc.count("/")
    out, done = [], 0
    for name, start, end in blocks(text, doc):
        body = BLOCKS[name](Path(results))
        # bodies link from the repository root; a document in docs/ reaches results/ through ../
        body = body.replace("](results/", f"]({up}results/")
        out += [text[done:start], "\n", body, "\n"]
        done = end
    return "".join(out + [text[done:]])


def stale_blocks(repo_root: Path = REPO, results: Path | None = None) -> dict[str, list[str]]:
    """{document: names of its blocks whose committed body differs from what `results` regenerates}; empty
    when every block is current."""
    repo_root = Path(repo_root)
    results = Path(results) if results else repo_root / "results"
    stale = {}
    for doc in DOCS:
        text = (repo_root / doc).read_text()
        fresh = render(text, results, doc)
        old, new = blocks(text, doc), blocks(fresh, doc)
        names = [name for (name, s, e), (_, s2, e2) in zip(old, new) if text[s:e] != fresh[s2:e2]]
        if names:
            stale[doc] = names
    return stale


def write_docs(repo_root: Path = REPO, results: Path | None = None) -> list[Path]:
    """Rewrite the generated blocks of README.md and docs/METHOD.md from `results` (default: the repository's
    results/); returns the documents that changed. `make reproduce` calls it after writing results/README.md."""
    repo_root = Path(repo_root)
    results = Path(results) if results else repo_root / "results"
    changed = []
    for doc in DOCS:
        path = repo_root / doc
        text = path.read_text()
        fresh = render(text, results, doc)
        if fresh != text:
            write_text_atomic(path, fresh)
            changed.append(path)
    return changed
