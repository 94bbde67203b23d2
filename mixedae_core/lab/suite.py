"""One notebook's view of the runs: its preset, dataset, seeds and device, its runs (from the experiment table)
through the run cache and their records, and its tables and figures, which carry their provenance.

Tables come from records (runs.py), so committed records regenerate every table without training; only
the figures that draw a model need its checkpoint (and train it when it is missing).
"""
import functools
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..config import METHODS, PRESETS, Config, make_config
from ..data import dataset_of, normalize
from ..evaluate import DEPENDENCE_LAYOUTS, LearningCurveProbe, content_ratio
from ..runfiles import load_model, read_metrics, run_finished, write_atomic, write_text_atomic
from ..train import describe_device, resolve_device
from .experiments import curve_runs, drawn_runs, notebook_runs
from .provenance import REPO, provenance
from .runs import (ensure_run, evaluate_run, export_record, record_has_model, record_is_current, results_name,
                   run_dir_for, runs_root)

SCORES = ("knn_cls", "probe_cls", "knn_mean", "probe_mean", "object_iou", "object_iou_translated",
          "object_iou_cluttered", "cls_self_attention",
          "shared_loss_random", "floor_random", "shared_loss_class", "floor_class",
          *(f"dose_{kind}_{layout}" for layout in DEPENDENCE_LAYOUTS for kind in ("loss", "reliance")),
          "dose_floor", "dose_sensitivity", "dose_pred_change")


INTERACTIVE = "interactive"  # under the results folder, git-ignored: what a notebook run by hand writes
PAPER_METRICS = ("finetune_top1", "dense_miou")  # absent from records evaluated before they were measured
INIT_SCORES = ("knn_cls", "knn_mean", "probe_cls")  # the random init's scores a row carries beside the run's


@dataclass
class Suite:
    """One notebook's view of the experiment: its preset, seeds, device, output folder and dataset."""
    preset: str
    seeds: list | None = None        # None: the preset's seeds
    device: str = "auto"
    out_dir: str = "results"
    notebook: str = "notebook"
    runs_root: str | None = None
    dataset: str | None = None       # None: the preset's
    progress: bool = True
    by_hand: bool = False            # tables, figures and new records under <out_dir>/interactive/, not committed
    started: float = field(default_factory=time.time)

    def __post_init__(self):
        self.config()  # unknown preset or dataset: fail before any work
        seeds = PRESETS[self.preset].seeds if self.seeds is None else self.seeds
        if not isinstance(seeds, (list, tuple)) or not seeds or \
                not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
            raise ValueError(f"seeds must be None (the preset's seeds) or a non-empty list of integers such as "
                             f"[0, 1, 2], got {self.seeds!r}")
        self.seeds = list(seeds)
        out = Path(self.out_dir)
        self.out = out if out.is_absolute() else (REPO / out)
        self.eval_config = PRESETS[self.preset].eval
        self.name = results_name(self.preset, self.dataset)  # its folder under runs/, tables/, figures/, notebooks/
        self.committed = self.out / "runs" / self.name
        self.written = self.out / INTERACTIVE if self.by_hand else self.out  # where its tables, figures, records go
        self.records = self.written / "runs" / self.name

    # ---------------------------------------------------------------- runs
    def config(self, **overrides) -> Config:
        """The preset on the suite's dataset, with `overrides`. device 'auto' keeps the preset's own device (cpu
        for smoke/cpu, cuda for gpu), so a preset's records keep their names on any machine: a CPU reading
        committed GPU records finds them instead of training the GPU preset on its cores."""
        device = {} if self.device == "auto" else {"device": self.device}
        dataset = {} if self.dataset is None else {"dataset": self.dataset}
        return make_config(self.preset, **{**device, **dataset, **overrides})

    def runs(self) -> list[dict]:
        """The runs this notebook reads, as the experiment table declares them (experiments.py)."""
        return notebook_runs(self.notebook, self.config(method="mixedae"), self.seeds)

    def drawn(self) -> list[dict]:
        """The runs whose models this notebook draws (their checkpoints, not only their records)."""
        return drawn_runs(self.notebook, self.seeds)

    def run(self, **overrides) -> Path:
        """The run directory (with its checkpoint): cached, resumed or trained."""
        config = self.config(**overrides)
        return ensure_run(config, root=self.runs_root, progress=self.progress, probe=self.curve_probe(config))

    def curve_probe(self, config: Config) -> LearningCurveProbe | None:
        """The learning-curve probe of a run that the experiment table gives curves, at the preset's
        curve_epochs; None for the other runs and for a preset without curves."""
        epochs = PRESETS[self.preset].curve_epochs
        if not epochs or run_dir_for(config, self.runs_root).name not in self.curve_run_names:
            return None
        return LearningCurveProbe(config, self.eval_config, epochs)

    @functools.cached_property
    def curve_run_names(self) -> set[str]:
        return {run_dir_for(self.config(**o), self.runs_root).name
                for o in curve_runs(self.config(method="mixedae"), self.seeds)}

    def model(self, **overrides):
        """(trained model in eval mode on the suite's device, its Config): from the run cache, else from the record's
        kept weights, else trained."""
        source = self.record_path(**overrides)
        if self.has_run(**overrides) or not record_has_model(source):
            source = self.run(**overrides)
        return load_model(source, resolve_device(self.config(**overrides)))

    def torch_device(self):
        return resolve_device(self.config())

    def record_path(self, **overrides) -> Path:
        """Where the run's record is read: the committed one while it is current, else the one this suite wrote."""
        name = run_dir_for(self.config(**overrides), self.runs_root).name
        if self.records == self.committed or record_is_current(self.committed / name, self.eval_config):
            return self.committed / name
        return self.records / name if (self.records / name).exists() else self.committed / name

    def has_run(self, **overrides) -> bool:
        """A finished run (with its checkpoint) in the run cache."""
        return run_finished(run_dir_for(self.config(**overrides), self.runs_root))

    def has_model(self, **overrides) -> bool:
        """The run's model is at hand without training: in the run cache or kept beside its record."""
        return self.has_run(**overrides) or record_has_model(self.record_path(**overrides))

    def has_record(self, **overrides) -> bool:
        return record_is_current(self.record_path(**overrides), self.eval_config)

    def record(self, **overrides) -> Path:
        """The run's current record; a missing or outdated one is made from the run (trained if needed)."""
        source = self.record_path(**overrides)
        if record_is_current(source, self.eval_config):
            return source
        record = self.records / source.name
        if record_has_model(source) and not self.has_run(**overrides):  # re-evaluated from its kept weights
            if record != source:  # a committed record, re-evaluated by hand: in a copy, renamed in place when whole
                partial = record.with_name(f"{record.name}.{os.getpid()}.tmp")
                shutil.rmtree(partial, ignore_errors=True)
                shutil.copytree(source, partial)
                os.replace(partial, record)
            evaluate_run(record, self.eval_config, progress=False, baselines_root=self.runs_root or runs_root())
            return record
        run_dir = self.run(**overrides)
        evaluate_run(run_dir, self.eval_config, progress=False)
        export_record(run_dir, record)
        return record

    def headline_scores(self) -> dict | None:
        """{method: [its encoder scores, one dict per seed]} from the headline records; None while one is missing."""
        if not all(self.has_record(method=m, seed=s) for m in METHODS for s in self.seeds):
            return None
        return {m: [self.evaluation(method=m, seed=s)["scores"]["encoder"] for s in self.seeds] for m in METHODS}

    def knn_spread(self) -> float | None:
        """The headline comparison's seed spread: the largest std over seeds of kNN [CLS] (points) among the
        methods; None with fewer than 2 seeds or while a headline record is missing."""
        headline = self.headline_scores() if len(self.seeds) >= 2 else None
        if headline is None:
            return None
        return max(100 * np.std([s["knn_cls"] for s in scores], ddof=1) for scores in headline.values())

    def knn_noise(self) -> float | None:
        """The evaluation's own noise on the headline kNN [CLS]: the binomial standard error (points) of a test
        accuracy at the headline runs' mean accuracy and test-set size; None while a headline record is missing."""
        headline = self.headline_scores()
        if headline is None:
            return None
        scores = [s for per_method in headline.values() for s in per_method]
        p = np.mean([s["knn_cls"] for s in scores])
        return 100 * float(np.sqrt(p * (1 - p) / scores[0]["test_images"]))

    def evaluation(self, **overrides) -> dict:
        return json.loads((self.record(**overrides) / "eval.json").read_text())

    def row(self, **overrides) -> dict:
        """One flat row of a run (from its record): its switches, scores (and its seed's random init's, init_*),
        final losses and cost."""
        record = self.record(**overrides)
        result = json.loads((record / "eval.json").read_text())
        summary = json.loads((record / "summary.json").read_text())
        final = final_losses(read_metrics(record))
        config = result["config"]
        return {"method": config["method"], "seed": config["seed"], **overrides,
                **{k: result["scores"]["encoder"][k] for k in SCORES},
                **{k: result["scores"]["encoder"].get(k, np.nan) for k in PAPER_METRICS},
                "content_ratio": content_ratio(result["scores"]["encoder"]), "epochs_run": summary["epochs_run"],
                **{f"init_{k}": result["scores"].get("random_init", {}).get(k) for k in INIT_SCORES},
                **{f"init_{k}": result["scores"].get("random_init", {}).get(k, np.nan) for k in PAPER_METRICS},
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

    def test_images(self, n: int, seed: int = 0, **overrides):
        """(normalised images on the device, uint8 images, labels): n test images of the preset's data,
        a fixed random choice per seed."""
        c = self.config(**overrides)
        test = dataset_of(c, "test")
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
        return {**provenance(dev), "device": name, "preset": self.preset, "dataset": self.config().dataset,
                "seeds": self.seeds, "notebook": self.notebook, "wall_seconds": round(time.time() - self.started, 1)}

    def provenance_line(self) -> str:
        p = self.provenance()
        return (f"{p['notebook']} | preset {p['preset']} | {p['dataset']} | seeds {p['seeds']} | {p['device']} | "
                f"commit {p['commit']} | {p['date']} | {p['wall_seconds']:.0f} s so far")

    def save_table(self, df: pd.DataFrame, name: str) -> Path:
        """CSV with the provenance as leading '#' lines (pandas: read_csv(path, comment='#'))."""
        path = self.written / "tables" / self.name / f"{name}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        header = "".join(f"# {k}: {v}\n" for k, v in self.provenance().items())
        write_text_atomic(path, header + df.to_csv(index=False))
        return path

    def save_figure(self, fig, name: str) -> Path:
        path = self.written / "figures" / self.name / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        if fig.get_layout_engine() is None:  # panels' axis labels otherwise overlap their neighbours
            fig.tight_layout()
        # below the figure (tight bbox takes it in), clear of the axis labels
        fig.text(0.01, -0.01, self.provenance_line(), fontsize=6, color="0.4", ha="left", va="top")
        comment = self.provenance_line()
        write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=130, bbox_inches="tight",
                                                    metadata={"Comment": comment}))
        return path


def final_losses(metrics: list[dict], share: float = 0.1) -> dict:
    """The losses at the end of training: the mean of the logged steps in the last `share` of the steps
    (at least the last logged step), not the epoch means, which include the warm-up."""
    steps = [m for m in metrics if m["kind"] == "step"]
    if not steps:
        return {}
    last = steps[-1]["step"]
    window = [m for m in steps if m["step"] >= last * (1 - share)]
    return {k: float(np.mean([m[k] for m in window])) for k in ("loss_rec", "loss_hc")}
