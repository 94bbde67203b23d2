"""What the ablation notebooks share: their setup, their runs (from the experiment table) through the run
cache and their records, statistics and verdicts, and tables and figures that carry their provenance.
Notebooks stay thin: parameters, calls into this, plots, text.

Tables come from records (runs.py), so committed records regenerate every table without training; only
the figures that draw a model need its checkpoint (and train it when it is missing).
"""
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import PRESETS, Config, make_config
from ..evaluate import DEPENDENCE_LAYOUTS
from ..model import METHODS
from ..runfiles import load_model, read_metrics, run_finished
from ..train import describe_device, resolve_device
from .experiments import drawn_runs, notebook_runs
from .provenance import REPO, provenance
from .runs import ensure_run, evaluate_run, export_record, record_is_current, run_dir_for

SCORES = ("knn_cls", "probe_cls", "knn_mean", "probe_mean", "object_iou", "object_iou_translated",
          "object_iou_cluttered", "cls_self_attention",
          "shared_loss_random", "floor_random", "shared_loss_class", "floor_class",
          *(f"dose_{kind}_{layout}" for layout in DEPENDENCE_LAYOUTS for kind in ("loss", "reliance")),
          "dose_floor", "dose_sensitivity", "dose_pred_change")


@dataclass
class Suite:
    """One notebook's view of the experiment: its preset, seeds, device and output folder."""
    preset: str
    seeds: list | None = None        # None: the preset's seeds
    device: str = "auto"
    out_dir: str = "results"
    notebook: str = "notebook"
    runs_root: str | None = None
    progress: bool = True
    started: float = field(default_factory=time.time)

    def __post_init__(self):
        make_config(self.preset)  # unknown preset: fail before any work
        seeds = PRESETS[self.preset].seeds if self.seeds is None else self.seeds
        if not isinstance(seeds, (list, tuple)) or not seeds or \
                not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
            raise ValueError(f"seeds must be None (the preset's seeds) or a non-empty list of integers such as "
                             f"[0, 1, 2], got {self.seeds!r}")
        self.seeds = list(seeds)
        out = Path(self.out_dir)
        self.out = out if out.is_absolute() else (REPO / out)
        self.eval_config = PRESETS[self.preset].eval
        self.records = self.out / "runs" / self.preset

    # ---------------------------------------------------------------- runs
    def config(self, **overrides) -> Config:
        """The preset with `overrides`. device 'auto' keeps the preset's own device (cpu for smoke/cpu, cuda for
        gpu), so a preset's records keep their names on any machine: a CPU reading committed GPU records
        finds them instead of training the GPU preset on its cores."""
        device = {} if self.device == "auto" else {"device": self.device}
        return make_config(self.preset, **{**device, **overrides})

    def runs(self) -> list[dict]:
        """The runs this notebook reads, as the experiment table declares them (experiments.py)."""
        return notebook_runs(self.notebook, self.config(method="mixedae"), self.seeds)

    def drawn(self) -> list[dict]:
        """The runs whose models this notebook draws (their checkpoints, not only their records)."""
        return drawn_runs(self.notebook, self.seeds)

    def run(self, **overrides) -> Path:
        """The run directory (with its checkpoint): cached, resumed or trained."""
        return ensure_run(self.config(**overrides), root=self.runs_root, progress=self.progress)

    def model(self, **overrides):
        """(trained model in eval mode on the suite's device, its Config)."""
        run_dir = self.run(**overrides)
        return load_model(run_dir, resolve_device(self.config(**overrides)))

    def torch_device(self):
        return resolve_device(self.config())

    def record_path(self, **overrides) -> Path:
        return self.records / run_dir_for(self.config(**overrides), self.runs_root).name

    def has_run(self, **overrides) -> bool:
        """A finished run (with its checkpoint) in the run cache."""
        return run_finished(run_dir_for(self.config(**overrides), self.runs_root))

    def has_record(self, **overrides) -> bool:
        return record_is_current(self.record_path(**overrides), self.eval_config)

    def record(self, **overrides) -> Path:
        """The run's current record; a missing or outdated one is made from the run (trained if needed)."""
        record = self.record_path(**overrides)
        if not record_is_current(record, self.eval_config):
            run_dir = self.run(**overrides)
            evaluate_run(run_dir, self.eval_config, progress=False)
            export_record(run_dir, record)
        return record

    def knn_spread(self) -> float | None:
        """The headline comparison's seed spread: the largest std over seeds of kNN [CLS] (points) among the
        methods; None with fewer than 2 seeds or while a headline record is missing."""
        if len(self.seeds) < 2 or not all(self.has_record(method=m, seed=s) for m in METHODS for s in self.seeds):
            return None
        return max(100 * np.std([self.evaluation(method=m, seed=s)["scores"]["encoder"]["knn_cls"]
                                 for s in self.seeds], ddof=1) for m in METHODS)

    def conclusion(self, claims: list[dict], *notes: str):
        """`conclusion` with this preset's headline kNN seed spread."""
        return conclusion(claims, *notes, knn_spread=self.knn_spread())

    def evaluation(self, **overrides) -> dict:
        return json.loads((self.record(**overrides) / "eval.json").read_text())

    def row(self, **overrides) -> dict:
        """One flat row of a run (from its record): its switches, scores, final losses and cost."""
        record = self.record(**overrides)
        result = json.loads((record / "eval.json").read_text())
        summary = json.loads((record / "summary.json").read_text())
        final = final_losses(read_metrics(record))
        config = result["config"]
        return {"method": config["method"], "seed": config["seed"], **overrides,
                **{k: result["scores"]["encoder"][k] for k in SCORES},
                "loss_rec": final.get("loss_rec"), "loss_hc": final.get("loss_hc"),
                "train_seconds": summary["train_seconds"], "img_per_s": summary["img_per_s"],
                "steps": summary["steps"], "run": record.name,
                "warnings": "; ".join(summary.get("recognition", {}).get("warnings", []))}

    def baselines(self, **overrides) -> pd.DataFrame:
        """Random-init encoder, raw-pixel and model-free map (uniform, centre prior) scores of the preset's
        model and data, one row each."""
        scores = self.evaluation(**overrides)["scores"]
        return pd.DataFrame([{"baseline": name, **{k: v for k, v in s.items() if not k.endswith("_images")}}
                             for name, s in scores.items() if name != "encoder"])

    def reference(self, columns: list[str]) -> pd.DataFrame:
        """Every baseline's `columns`, mean over the suite's seeds that have it (from the MAE records, which hold
        the baselines every method of a seed shares), one row per baseline."""
        per_seed = [self.baselines(method="mae", seed=s).set_index("baseline") for s in self.seeds]
        present = [c for c in columns if any(c in b for b in per_seed)]
        return pd.concat([b.reindex(columns=present) for b in per_seed]).groupby(level=0, sort=False).mean() \
            .rename_axis("baseline")

    @staticmethod
    def measure_check(scores: pd.Series, trivial: list[str], checks: list[str]) -> tuple[bool, str]:
        """(passes, a conclusion line): does the measure pass its validation, oracle >= positive control > every
        trivial baseline (`scores` by baseline name; `checks` = [oracle, positive control])?"""
        best = scores[trivial].idxmax()
        if len(checks) < 2:
            return False, (f"- Check of the measure: no positive control was measured (`control_epochs` = 0); best "
                           f"trivial baseline {best} {100 * scores[best]:.1f}.")
        oracle, control = (scores[name] for name in checks)
        holds = oracle >= control > scores[best]
        return holds, (f"- Check of the measure: oracle {100 * oracle:.1f} ≥ positive control {100 * control:.1f} > "
                       f"best trivial baseline ({best}) {100 * scores[best]:.1f}: "
                       f"**{'holds' if holds else 'does not hold'}**"
                       + ("." if holds else "; the models' scores on this variant are reported without a verdict."))

    def test_images(self, n: int, seed: int = 0, **overrides):
        """(normalised images on the device, uint8 images, labels): n test images of the preset's data,
        a fixed random choice per seed."""
        import torch

        from ..data import load_dataset, normalize
        c = self.config(**overrides)
        test = load_dataset(c.dataset_kind, "test", c.img_size, c.in_chans, c.download, c.synthetic_size, c.seed)
        idx = torch.randperm(len(test), generator=torch.Generator().manual_seed(seed))[:n]
        raw = test.images[idx].to(resolve_device(c))
        return normalize(raw, test.name), raw, test.labels[idx]

    def metrics(self, kind="step", **overrides) -> pd.DataFrame:
        """The logged training metrics of a run (from its record)."""
        return pd.DataFrame([m for m in read_metrics(self.record(**overrides)) if m["kind"] == kind])

    # ---------------------------------------------------------------- provenance and outputs
    def provenance(self) -> dict:
        """Where this notebook ran. A GPU preset's tables can be rebuilt from its records on a machine without
        the preset's device; the records' own summary.json and eval.json name the device that trained them."""
        try:
            dev = resolve_device(self.config())
            name = describe_device(dev)
        except ValueError:
            dev, name = "cpu", f"{describe_device('cpu')}, reading records of a {self.config().device} preset"
        return {**provenance(dev), "device": name, "preset": self.preset, "seeds": self.seeds,
                "notebook": self.notebook, "wall_seconds": round(time.time() - self.started, 1)}

    def provenance_line(self) -> str:
        p = self.provenance()
        return (f"{p['notebook']} | preset {p['preset']} | seeds {p['seeds']} | {p['device']} | "
                f"commit {p['commit']} | {p['date']} | {p['wall_seconds']:.0f} s so far")

    def save_table(self, df: pd.DataFrame, name: str) -> Path:
        """CSV with the provenance as leading '#' lines (pandas: read_csv(path, comment='#'))."""
        path = self.out / "tables" / self.preset / f"{name}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        header = "".join(f"# {k}: {v}\n" for k, v in self.provenance().items())
        path.write_text(header + df.to_csv(index=False))
        return path

    def save_figure(self, fig, name: str) -> Path:
        path = self.out / "figures" / self.preset / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        if fig.get_layout_engine() is None:  # panels' axis labels otherwise overlap their neighbours
            fig.tight_layout()
        # below the figure (tight bbox takes it in), clear of the axis labels
        fig.text(0.01, -0.01, self.provenance_line(), fontsize=6, color="0.4", ha="left", va="top")
        fig.savefig(path, dpi=130, bbox_inches="tight", metadata={"Comment": self.provenance_line()})
        return path

    def save_claims(self, claims: list[dict]) -> Path:
        """The notebook's verdicts on the paper's claims (Holm-adjusted across them), for results/README.md's
        headline table."""
        return self.save_table(pd.DataFrame(adjusted(claims)), f"claims_{self.notebook}")


def final_losses(metrics: list[dict], share: float = 0.1) -> dict:
    """The losses at the end of training: the mean of the logged steps in the last `share` of the steps
    (at least the last logged step), not the epoch means, which include the warm-up."""
    steps = [m for m in metrics if m["kind"] == "step"]
    if not steps:
        return {}
    last = steps[-1]["step"]
    window = [m for m in steps if m["step"] >= last * (1 - share)]
    return {k: float(np.mean([m[k] for m in window])) for k in ("loss_rec", "loss_hc")}


# -------------------------------------------------------------------- statistics and verdicts
def _number(x: float, digits: int | None) -> str:
    return f"{x:.{digits}f}" if digits is not None else f"{x:.3g}"


def mean_std(values, scale=100.0, digits: int | None = 1) -> str:
    """'mean ± std' over seeds; digits None: three significant digits, for values of any magnitude."""
    v = np.asarray(values, dtype=float) * scale
    if len(v) < 2:
        return _number(v.mean(), digits)
    std = v.std(ddof=1)
    if std <= 1e-9 * np.abs(v).max():  # equal values up to float rounding (0.1 + 0.2 vs 0.3)
        std = 0.0
    return f"{_number(v.mean(), digits)} ± {_number(std, digits)}"


def paired_test(a, b) -> float:
    """Two-sided paired t-test p-value of a vs b over seeds; nan with fewer than 2 pairs. Differences that are
    the same in every seed (no spread, so no t statistic) are decided explicitly: p = 0 when that difference
    is non-zero (the same sign and size in every seed), 1 when it is zero."""
    from scipy.stats import ttest_rel
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    d = a - b
    if len(d) < 2:
        return float("nan")
    if np.allclose(d, d[0], rtol=1e-9, atol=1e-12):
        return 0.0 if abs(d[0]) > 1e-12 else 1.0
    return float(ttest_rel(a, b).pvalue)


def holm(p_values) -> list[float]:
    """Holm-Bonferroni adjusted p-values (nan stays nan and does not count among the tests)."""
    p = np.asarray(p_values, dtype=float)
    tested = np.flatnonzero(~np.isnan(p))
    adjusted = np.full(len(p), np.nan)
    running = 0.0
    for rank, i in enumerate(tested[np.argsort(p[tested], kind="stable")]):
        running = max(running, min(1.0, (len(tested) - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()


AT_FLOOR = "at floor: the models do not use their input yet"


def verdict(diff: float, p: float, paper_sign: int, alpha: float = 0.05, floor_gap: float | None = None) -> str:
    """What a measured difference says about a claim whose direction is `paper_sign` (+1 / -1). p is the
    (adjusted) p-value. floor_gap: how far the models' pretext loss lies below their content-blind floor
    (the smaller of the two); a pretext effect larger than that gap cannot be read."""
    if floor_gap is not None and floor_gap < abs(diff):
        return AT_FLOOR
    if diff == 0 or math.isnan(diff):
        return "no difference measured"
    agrees = np.sign(diff) == paper_sign
    significant = not math.isnan(p) and p < alpha
    if agrees:
        return "reproduces (paper's direction, p < %.2f)" % alpha if significant else \
            "paper's direction, not significant"
    return "contradicts (opposite direction, p < %.2f)" % alpha if significant else \
        "opposite direction, not significant"


def claim(text: str, a, b, paper_sign: int, label_a: str, label_b: str, scale=100.0, unit="points",
          floor_gap: float | None = None, reference: str = "") -> dict:
    """One headline row: the paper says (a - b) has sign `paper_sign`; a and b are per-seed values.
    floor_gap (in a's units, before `scale`): see `verdict`. reference: the floor or baseline to read the
    numbers against (floor_gap fills it when not given). The verdict is final once the notebook's claims
    are adjusted together (`adjusted`)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    digits = 1 if scale >= 100 else None  # percentages to 0.1; losses and rates to three significant digits
    diff = float((a - b).mean()) * scale
    p = paired_test(a, b) if len(a) == len(b) else float("nan")
    gap = None if floor_gap is None else floor_gap * scale
    spread = max(a.std(ddof=1), b.std(ddof=1)) * scale if min(len(a), len(b)) >= 2 else float("nan")
    return {"claim": text,
            "measured": f"{label_a} {mean_std(a, scale, digits)} vs {label_b} {mean_std(b, scale, digits)} "
                        f"({'+' if diff >= 0 else ''}{_number(diff, None if digits is None else digits + 1)}"
                        f"{' ' + unit if unit else ''})",
            "difference": diff, "p_value": p, "seeds": len(a), "unit": unit, "seed_spread": spread,
            "paper_sign": paper_sign, "floor_gap": gap,
            "reference": reference or ("" if gap is None else f"models {gap:.3g} below their content floor"),
            "verdict": verdict(diff, p, paper_sign, floor_gap=gap)}


def unvalidated(c: dict, reason: str) -> dict:
    """A claim reported without a verdict, because its measure failed a check that has nothing to do with the
    paper (`reason`): it keeps its numbers and leaves Holm's correction."""
    return {k: v for k, v in c.items() if k != "paper_sign"} | {"verdict": f"reported, no verdict: {reason}"}


def adjusted(claims: list[dict]) -> list[dict]:
    """A notebook's claims with Holm-adjusted p-values across them and the verdicts read from those. Rows
    without a paper direction (a number reported outside the paper's setting) keep their own verdict."""
    p_adjusted = holm([c["p_value"] if "paper_sign" in c else float("nan") for c in claims])
    out = []
    for c, p in zip(claims, p_adjusted):
        c = {**c, "p_adjusted": p}
        if "paper_sign" in c:
            c["verdict"] = verdict(c["difference"], p, c["paper_sign"], floor_gap=c.get("floor_gap"))
        out.append(c)
    return out


def headline(verdicts) -> str:
    """One sentence over claims' verdicts that counts significant results only (numbers reported without a
    verdict do not count as claims)."""
    verdicts = [v for v in verdicts if not v.startswith("reported")]
    reproduces = sum(v.startswith("reproduces") for v in verdicts)
    contradicts = sum(v.startswith("contradicts") for v in verdicts)
    at_floor = sum(v == AT_FLOOR for v in verdicts)
    floor = f"; {at_floor} at the content floor" if at_floor else ""
    if not reproduces + contradicts:
        return f"**None of {len(verdicts)} claims is significant** after Holm's correction within each notebook{floor}."
    return (f"**{reproduces + contradicts} of {len(verdicts)} claims are significant** after Holm's correction within "
            f"each notebook: {reproduces} in the paper's direction, {contradicts} against it{floor}.")


# -------------------------------------------------------------------- notebook setup and conclusion
# The parameters every notebook declares whose defaults (None) do not tell their type: (types, in words).
PARAMETER_TYPES = {"seeds": ((list, type(None)), "a list of integers such as [0, 1, 2], or None for the preset's seeds"),
                   "runs_root": ((str, type(None)), "a folder path, or None for runs/ in the repository")}


def check_injected_parameters(notebook: str):
    """Parameters papermill injected into this notebook (its '# Parameters' cell) that the notebook does not
    declare, or of another type than declared, are errors: papermill itself only logs a warning and runs the
    defaults."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    injected = [cell for cell in (shell.user_ns.get("In", []) if shell else []) if cell.startswith("# Parameters")]
    if not injected:
        return
    import ast

    from .reproduce import NOTEBOOK_DIR, notebook_parameters
    declared = notebook_parameters(NOTEBOOK_DIR / f"{notebook}.ipynb", defaults=True)
    names = [t.id for node in ast.parse(injected[-1]).body if isinstance(node, ast.Assign)
             for t in node.targets if isinstance(t, ast.Name)]
    # a refused parameter is the user's input, not a bug: its one sentence without the frames of this check
    shell.InteractiveTB.set_mode(mode="Minimal")
    unknown = [n for n in names if n not in declared]
    if unknown:
        raise ValueError(f"notebook {notebook} has no parameter(s) {', '.join(unknown)}; it declares "
                         f"{', '.join(declared)}")
    for name in names:
        value, default = shell.user_ns[name], declared[name]
        expected, words = PARAMETER_TYPES.get(name) or (
            (int, float) if isinstance(default, float) else type(default), f"a value like its default {default!r}")
        if not isinstance(value, expected) or (isinstance(value, bool) and not isinstance(default, bool)):
            raise ValueError(f"notebook parameter {name} takes {words}, got {value!r}")
        if type(default) is int and default >= 1 and value < 1:  # a count (images, steps)
            raise ValueError(f"notebook parameter {name} counts something: it takes an integer >= 1, got {value!r}")
    shell.InteractiveTB.set_mode(mode="Context")  # IPython's default for the notebook's own errors


def start(notebook: str, preset: str, seeds=None, device: str = "auto", out_dir: str = "results",
          runs_root: str | None = None) -> Suite:
    """The first cell of every notebook: the parameters checked, the plotting theme and the notebook's Suite."""
    check_injected_parameters(notebook)
    import seaborn as sns
    sns.set_theme(style="whitegrid", context="notebook")
    return Suite(preset, seeds, device, out_dir, notebook=notebook, runs_root=runs_root)


def recognition_notes(rows: pd.DataFrame) -> list[str]:
    """One line per run whose homologous recognition sat at chance or at its collapse value at the end."""
    flagged = rows[rows["warnings"].fillna("") != ""] if "warnings" in rows else rows.iloc[:0]
    return [f"- Run {r['run']} ({r['method']}, seed {r['seed']}): {r['warnings']}." for _, r in flagged.iterrows()]


def _p_text(c: dict) -> str:
    if math.isnan(c["p_value"]):
        return ""
    holm_p = c.get("p_adjusted", float("nan"))
    return f", p = {c['p_value']:.3f}" + ("" if math.isnan(holm_p) else f" (Holm {holm_p:.3f})")


def against_spread(c: dict, knn_spread: float | None) -> str:
    """Whether a claim's effect exceeds the seed spread: accuracy-like effects (in points) against the headline
    kNN's spread, others against the spread of their own per-seed values."""
    if "unit" not in c:
        return ""
    if "points" in c["unit"] and knn_spread is not None and not math.isnan(knn_spread):
        spread, name = knn_spread, "the headline kNN's seed spread"
    elif not math.isnan(c["seed_spread"]):
        spread, name = c["seed_spread"], "its seed spread"
    else:
        return "; one seed, no spread to compare with"
    size = "larger" if abs(c["difference"]) > spread else "not larger"
    return f"; |effect| {abs(c['difference']):.3g} is {size} than {name} ({spread:.3g})"


def conclusion(claims: list[dict], *notes: str, knn_spread: float | None = None):
    """The notebook's closing text, computed from its numbers: the headline kNN's seed spread, one line per
    claim (with its effect against that spread, see `against_spread`), then the notes."""
    from IPython.display import Markdown
    lines = ["### Conclusion (computed from the numbers above)", ""]
    if knn_spread is not None:
        lines += [f"Seed spread of the headline kNN [CLS] (the largest std over seeds among MAE, naive and "
                  f"MixedAE): **{knn_spread:.2f} points**.", ""]
    lines += [f"- {c['claim']}: {c['measured']}" + _p_text(c) + against_spread(c, knn_spread) +
              f": **{c['verdict']}**." for c in adjusted(claims)]
    return Markdown("\n".join(lines + ([""] + list(notes) if notes else [])))
