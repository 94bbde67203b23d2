"""`make reproduce`: train and record the runs (campaign.py), execute the ablation notebooks through
papermill, write results/README.md and the generated blocks of README.md and docs/METHOD.md.

    python -m mixedae_core reproduce --preset cpu [--dataset D] [--out results] [--workers 1] [--budget S] [--only 01,05]

Each notebook gets `preset`, `seeds`, `device`, `out_dir` (and `dataset`, when given); a parameter a notebook
does not declare is an error (papermill alone would only warn). Runs are shared through the run cache and the
records, so an interrupted reproduce continues where it stopped. On another dataset than the preset's, the
records, tables, figures and notebooks go to <preset>-<dataset> folders (runs.results_name), which
results/README.md, the presets' page, leaves out.
"""
import contextlib
import errno
import json
import os
import statistics
import time
from pathlib import Path

import pandas as pd

from ..config import PRESETS
from ..runfiles import RunFileError, write_text_atomic
from .campaign import run_campaign
from .claims import headline
from .docblocks import write_docs
from .experiments import NOTEBOOKS
from .notebook import NOTEBOOK_DIR, WRITE_RESULTS, notebook_parameters
from .provenance import REPO, git_commit
from .suite import Suite


class CampaignIncomplete(RuntimeError):
    def __init__(self, message: str, failed: list):
        super().__init__(message)
        self.failed = failed  # runs that raised: the command exits 1, not 3 (only the budget ran out)


def run_notebooks(preset: str, out_dir="results", device: str = "auto", only=None, extra: dict | None = None,
                  runs_root: str | None = None, progress: bool = True, workers: int = 1,
                  budget_s: float | None = None, dataset: str | None = None) -> dict:
    """The campaign (unless `only` picks notebooks), then the notebooks, on `dataset` (None: the preset's);
    returns {notebook: wall seconds}. `extra` adds parameters to every notebook. A campaign that stops at its
    budget renders the notebooks whose runs are all recorded, writes what the others wait for
    (tables/<name>/missing_runs.json, shown in results/README.md) and raises CampaignIncomplete."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    out = Path(out_dir).resolve()
    suite = Suite(preset, None, device, str(out), runs_root=runs_root, dataset=dataset, progress=False)
    unmatched = [o for o in only or () if not any(n.startswith(o) for n in NOTEBOOKS)]
    if unmatched:
        raise ValueError(f"--only: no notebook starts with {', '.join(unmatched)}; "
                         f"the notebooks are {', '.join(NOTEBOOKS)}")
    names = [n for n in NOTEBOOKS if not only or any(n.startswith(o) for o in only)]
    result = None if only else run_campaign(preset, None, out, runs_root, device, workers, budget_s,
                                            progress=progress, dataset=dataset)
    waiting = {} if result is None or result["complete"] else missing_runs(suite, names)
    if result is not None:  # --only says nothing of the notebooks it leaves out
        write_missing(out / "tables" / suite.name, waiting)
    timings = execute(suite, [n for n in names if n not in waiting], out, device, runs_root, dataset, extra, progress)
    # results/README.md shows the presets on their own data; the smoke check's tables and figures are git-ignored
    if suite.name == preset and PRESETS[preset].committed:
        write_readme(out)
    if out == (REPO / "results").resolve():  # the docs quote the repository's own tables, not another folder's
        write_docs(REPO, out)
    if result is not None and not result["complete"]:
        raise CampaignIncomplete(
            f"{len(result['failed'])} run(s) failed, {len(result['left'])} still pending after the budget: "
            + (f"rendered {', '.join(timings)}; " if timings else "")
            + (f"{', '.join(waiting)} wait for their runs. " if waiting else "")
            + f"Run the same command again to continue (finished runs are recorded in {suite.records}).",
            result["failed"])
    return timings


def missing_runs(suite: Suite, names: list[str]) -> dict[str, list[str]]:
    """{notebook: the runs it still needs}, for the notebooks among `names` that lack a record (named by the record),
    or the model they draw, neither in the run cache nor kept beside its record (named '<record> (model)')."""
    waiting = {}
    for name in names:
        nb = Suite(suite.preset, suite.seeds, suite.device, str(suite.out), notebook=name, runs_root=suite.runs_root,
                   dataset=suite.dataset, progress=False)
        missing = [nb.record_path(**r).name for r in nb.runs() if not nb.has_record(**r)]
        missing += [f"{nb.record_path(**r).name} (model)" for r in nb.drawn() if not nb.has_model(**r)]
        if missing:
            waiting[name] = sorted(set(missing))
    return waiting


def write_missing(tables: Path, waiting: dict[str, list[str]]):
    """tables/<name>/missing_runs.json while notebooks wait for runs; removed once none does."""
    path = tables / "missing_runs.json"
    if waiting:
        tables.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(waiting, indent=1))
    elif path.exists():
        path.unlink()


def execute(suite: Suite, names: list[str], out: Path, device: str, runs_root, dataset, extra, progress) -> dict:
    """Each notebook of `names` through papermill into notebooks/<suite name>/; {notebook: wall seconds}, also
    merged into tables/<suite name>/reproduce_log.json."""
    executed = out / "notebooks" / suite.name
    executed.mkdir(parents=True, exist_ok=True)
    timings = {}
    for name in names:
        path = NOTEBOOK_DIR / f"{name}.ipynb"
        params = {"preset": suite.preset, "seeds": list(PRESETS[suite.preset].seeds), "device": device,
                  "out_dir": str(out), **({"runs_root": runs_root} if runs_root else {}),
                  **({"dataset": dataset} if dataset else {}), **(extra or {})}
        unknown = set(params) - notebook_parameters(path)
        if unknown:
            raise ValueError(f"notebook {name} has no parameter(s) {', '.join(sorted(unknown))}; "
                             f"it declares {', '.join(sorted(notebook_parameters(path)))}")
        t0 = time.time()
        execute_notebook(path, executed / f"{name}.ipynb", params, progress)
        timings[name] = round(time.time() - t0, 1)
        print(f"{name}: {timings[name]:.0f} s", flush=True)
    log = out / "tables" / suite.name / "reproduce_log.json"
    previous = json.loads(log.read_text()) if log.exists() else {}
    log.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(log, json.dumps({**previous, **timings}, indent=1))
    return timings


def execute_notebook(path: Path, target: Path, params: dict, progress: bool):
    """One notebook through papermill into `target`, which appears whole or not at all (written beside it, then
    renamed). A full disk, in the kernel or here, is a RunFileError: one paragraph, not four chained tracebacks."""
    import papermill  # seconds to import, and only running the notebooks needs it
    tmp = target.with_name(f".{target.stem}.{os.getpid()}.tmp.ipynb")
    try:
        with results_written():
            # log_level: the kernel's warning about unencrypted local TCP, printed once per notebook, says nothing
            papermill.execute_notebook(str(path), str(tmp), parameters=params, kernel_name="python3",
                                       cwd=str(NOTEBOOK_DIR), progress_bar=progress,
                                       extra_arguments=["--IPKernelApp.log_level=ERROR"])
        os.replace(tmp, target)
    except BaseException as err:
        cause = getattr(err, "evalue", None) or str(err)  # a cell's error: papermill keeps its name and value
        if getattr(err, "ename", None) == "RunFileError" or isinstance(err, OSError) and err.errno == errno.ENOSPC \
                or "No space left" in cause:
            tmp.unlink(missing_ok=True)  # perhaps cut short: nothing of it is kept
            raise RunFileError(f"notebook {path.stem} stopped, and {target} was not written: "
                               f"{cause.splitlines()[0]}") from None
        if isinstance(err, papermill.PapermillExecutionError) and tmp.exists():  # kept to read, apart and ignored
            failed = target.with_name(f"{target.stem}.failed.ipynb")
            os.replace(tmp, failed)
            print(f"notebook {path.stem} failed; the executed notebook, with its error, is {failed}", flush=True)
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def results_written():
    """The notebooks executed inside write results/ (notebook.start reads it); by hand they write apart."""
    before = os.environ.get(WRITE_RESULTS)
    os.environ[WRITE_RESULTS] = "1"
    try:
        yield
    finally:
        if before is None:
            del os.environ[WRITE_RESULTS]
        else:
            os.environ[WRITE_RESULTS] = before


def _read_table(path: Path):
    """(DataFrame, provenance dict) of a CSV written by Suite.save_table."""
    meta = {}
    for line in path.read_text().splitlines():
        if not line.startswith("# "):
            break
        key, _, value = line[2:].partition(": ")
        meta[key] = value
    return pd.read_csv(path, comment="#"), meta


def _training_line(out: Path, preset: str) -> tuple[str, float]:
    """(a sentence, minutes) on the training campaigns behind a preset's records (tables/<preset>/campaign_log.json):
    training and evaluation of every run."""
    path = out / "tables" / preset / "campaign_log.json"
    records = {p.name for p in (out / "runs" / preset).glob("*")}  # campaigns behind the current records only

    def trained(c):  # a run resumed from a checkpoint finished its training there
        return c["trained"] + c.get("resumed", [])

    campaigns = [c for c in json.loads(path.read_text()) if any(e["run"] in records for e in trained(c))] \
        if path.exists() else []
    if not campaigns:
        return "", 0.0
    trainings = [e["run"] for c in campaigns for e in trained(c) if e["run"] in records]
    runs = f"{len(set(trainings))} runs" + (
        f" ({len(trainings)} trainings: a drawn model whose record is kept but whose checkpoint is missing is "
        "trained again)" if len(trainings) > len(set(trainings)) else "")
    minutes = sum(c["wall_seconds"] for c in campaigns) / 60
    where = sorted({f"{c['provenance']['device']}, {c['workers']} side by side, commit {c['provenance']['commit']}"
                    for c in campaigns})
    return (f" Training and evaluation: {runs} in {len(campaigns)} campaign(s), {minutes:.1f} min "
            f"({'; '.join(where)})."), minutes


def _transfer_cost_line(out: Path, preset: str) -> str:
    """The paper metrics' added evaluation per run (one fine-tuning and one dense fine-tuning, i.e. one seed of
    `noise_seeds`), as the records measured it (`seconds.transfer_per_seed` in each eval.json)."""
    seconds = [json.loads(p.read_text()).get("seconds", {}).get("transfer_per_seed")
               for p in sorted((out / "runs" / preset).glob("*/eval.json"))]
    seconds = [s for s in seconds if s is not None]
    if not seconds:
        return ""
    return (f" Fine-tuning and dense transfer added {statistics.median(seconds) / 60:.1f} min per run (median; "
            f"{min(seconds) / 60:.1f}–{max(seconds) / 60:.1f} over {len(seconds)} records, `seconds."
            f"transfer_per_seed` in each record, measured with the campaign's runs side by side).")


def _missing_line(out: Path, preset: str) -> list[str]:
    """What the preset's notebooks still wait for (reproduce.missing_runs), or nothing."""
    path = out / "tables" / preset / "missing_runs.json"
    if not path.exists():
        return []
    waiting = json.loads(path.read_text())
    runs = {r for names in waiting.values() for r in names}
    return [f"**Incomplete: {len(runs)} run(s) not recorded or trained yet**, so notebooks {', '.join(waiting)} have not been "
            f"rendered (the claims below are the other notebooks'). `make reproduce PRESET={preset} BUDGET=<seconds>` "
            f"continues the campaign; [tables/{preset}/missing_runs.json](tables/{preset}/missing_runs.json) lists "
            "the runs.", ""]


def _claims_section(out: Path, preset: str) -> list[str]:
    tables = sorted((out / "tables" / preset).glob("claims_*.csv"))
    if not tables:
        missing = _missing_line(out, preset)
        return [f"## {PRESETS[preset].title}", ""] + missing if missing else []
    lines = ["| notebook | claim | measured (mean ± std over seeds) | seeds | p (paired t) | p (Holm) | floor or baseline | verdict |",
             "|---|---|---|---|---|---|---|---|"]
    metas, verdicts = [], []
    for path in tables:
        df, meta = _read_table(path)
        metas.append(meta)
        for _, row in df.iterrows():
            p, holm_p = ("–" if pd.isna(row.get(k)) else f"{row[k]:.3f}" for k in ("p_value", "p_adjusted"))
            lines.append(f"| {meta.get('notebook', path.stem)} | {row['claim']} | {row['measured']} | "
                         f"{row['seeds']} | {p} | {holm_p} | {'' if pd.isna(row.get('reference')) else row['reference']} | "
                         f"**{row['verdict']}** |")
            verdicts.append(row["verdict"])
    timings_path = out / "tables" / preset / "reproduce_log.json"
    timings = json.loads(timings_path.read_text()) if timings_path.exists() else {}
    devices = sorted({m.get("device", "?") for m in metas})
    commits = sorted({m.get("commit", "?") for m in metas})
    dates = sorted(m.get("date", "?") for m in metas)
    total = sum(timings.values())
    training, training_minutes = _training_line(out, preset)
    head = [f"## {PRESETS[preset].title}", "",
            f"Device: {', '.join(devices)}; commit: {', '.join(commits)}; notebooks run {dates[0]} to {dates[-1]}; "
            f"wall time of the notebooks: {total / 60:.1f} min "
            f"({', '.join(f'{k} {v / 60:.1f}' for k, v in timings.items())}).{training}"
            f"{_transfer_cost_line(out, preset)}"
            + (f" In all: {training_minutes + total / 60:.1f} min." if training else ""), ""]
    head += _missing_line(out, preset) + [headline(verdicts) + " Each notebook discusses its numbers.", ""]
    return head + lines + [""]


def _bench_section(out: Path) -> list[str]:
    """tables/bench.csv (`make bench`) as a table: one block of rows per device it ran on."""
    path = out / "tables" / "bench.csv"
    if not path.exists():
        return []
    df = pd.read_csv(path)
    lines = ["## Benchmarks (`make bench`)", "",
             "Training step (forward, backward, AdamW) on on-device data; ViT-B/16 MFU from FLOPs counted by "
             "torch's FlopCounterMode over the device's dense bf16 peak (none for CPUs). Step-time ratios are "
             "medians of per-round ratios within one run; ✓ marks the precision the preset trains in on that device.", "",
             "| device | model | variant | batch | img/s | x MAE step time | x fp32 step time | peak memory (MiB) | MFU | "
             "commit, date |", "|---|---|---|---|---|---|---|---|---|---|"]
    for _, r in df.iterrows():
        memory = "–" if pd.isna(r.get("peak_memory_mib")) else f"{r['peak_memory_mib']:.0f} ({r['memory_kind']})"
        mfu = "–" if pd.isna(r.get("mfu")) else f"{100 * r['mfu']:.1f} %"
        to_fp32 = "–" if pd.isna(r.get("ratio_to_fp32")) else f"{r['ratio_to_fp32']:.2f}"
        path_mark = " ✓" if not pd.isna(r.get("preset_path")) and bool(r["preset_path"]) else ""
        lines.append(f"| {r['device']} ({r['dtype']}{path_mark}) | {r['benchmark']} | {r['variant']} | {r['batch']} | "
                     f"{r['img_per_s']:.1f} | {r['ratio_to_mae']:.2f} | {to_fp32} | {memory} | {mfu} | "
                     f"{r['commit']}, {r['date'][:10]} |")
    return lines + [""]


def write_readme(out: Path):
    """results/README.md: the headline table of every preset that has results, then the figures."""
    out = Path(out)
    presets = [p for p in PRESETS if PRESETS[p].committed and (out / "tables" / p).exists()]
    lines = ["# Results", "",
             "Written by `make reproduce` (`python -m mixedae_core reproduce`) from runs of the committed code; "
             "do not edit by hand. Every number below is read from a table in `tables/<preset>/` that a "
             "notebook in `notebooks/<preset>/` wrote; each table and figure carries its provenance "
             "(commit, preset, device, seeds, date, wall time).", ""]
    if not any((out / "tables" / "gpu").glob("claims_*.csv")):
        lines += ["**No GPU results yet.** The GPU suite (`scripts/gpu_suite.sh`, `make reproduce PRESET=gpu`) has "
                  "not run on a GPU; the CPU tables below come from small models trained for minutes to hours of a "
                  "2-core CPU: each section says what its numbers can show.", ""]
    for preset in presets:
        section = _claims_section(out, preset)
        if section:
            lines += section[:1] + ["", PRESETS[preset].note] + section[1:]
    lines += _bench_section(out)
    for preset in presets:
        figures = sorted((out / "figures" / preset).glob("*.png"))
        if figures:
            lines += [f"## Figures, preset `{preset}`", ""]
            lines += [f"![{f.stem}](figures/{preset}/{f.name})" for f in figures] + [""]
    lines += [f"_Regenerated with commit {git_commit()}._", ""]
    write_text_atomic(out / "README.md", "\n".join(lines))
