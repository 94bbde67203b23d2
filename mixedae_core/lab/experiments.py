"""What each notebook trains, written once: the campaign trains exactly these runs and the notebooks read
exactly these runs. A run is a dict of Config overrides on the preset (always with `method` and `seed`).

    EXPERIMENTS["03_choice_of_k"].runs(config, seeds)  ->  [{"method": "mixedae", "seed": 0, "topk": 9}, ...]

Values that depend on the preset's model (K in units of rN, full mixing's equal-compute step count from
`make bench`'s step times) are resolved from the preset's config, so every run carries explicit values.
"""
from dataclasses import dataclass

import pandas as pd
import torch

from ..data import training_batches
from ..config import METHODS
from ..switches import resolve
from .provenance import REPO
from .timing import bench_key

BENCH_CSV = REPO / "results" / "tables" / "bench.csv"


def k_values(config) -> list[int]:
    """Notebook 03's K values: half the default, the default (rN, or rN + 1 with a shared [CLS]), default + rN,
    and every key a patch query may read (global)."""
    s = resolve(config)
    return [s.default_K - s.tokens_per_image // 2, s.default_K, s.default_K + s.tokens_per_image, s.patch_keys]


def planned_steps(config) -> int:
    """Optimizer steps of a run of `config` (loads its training set's size, not the run)."""
    steps = config.epochs * training_batches(config, torch.device("cpu")).steps_per_epoch
    return steps if config.max_steps is None else min(steps, config.max_steps)


def full_step_ratio(config, bench_csv=BENCH_CSV) -> tuple[float, str] | None:
    """(full mixing's step time / compose's, where it was measured) for config's model, batch and kind of
    device, from the newest `make bench` rows that timed exactly that model; None when none did."""
    if not bench_csv.exists():
        return None
    rows = pd.read_csv(bench_csv)
    if "model_key" not in rows:
        return None
    rows = rows[rows.model_key == bench_key(config)]
    newest = rows[rows.date == rows.date.max()].set_index("variant")
    if not {"mixedae", "mixedae_full"} <= set(newest.index):
        return None
    full, compose = newest.loc["mixedae_full"], newest.loc["mixedae"]
    return full.step_ms / compose.step_ms, f"make bench, {compose.device}, commit {compose.commit}, {compose.date[:10]}"


def equal_compute(config, bench_csv=BENCH_CSV) -> tuple[int, str]:
    """(steps, basis) of a full-mixing run that takes the time of a compose run of `config`: compose's steps
    over the step-time ratio `make bench` measured for this model on this kind of device. Without such a
    measurement, 1/G of compose's steps (full mixing encodes G sequences per group where compose encodes one)."""
    measured = full_step_ratio(config, bench_csv)
    if measured is None:
        return max(1, planned_steps(config) // resolve(config).group_size), \
            "1/G of compose's steps: no `make bench` row for this model and device"
    ratio, where = measured
    return max(1, round(planned_steps(config) / ratio)), f"full step = {ratio:.2f}x compose step ({where})"


@dataclass(frozen=True)
class Experiment:
    """A notebook's runs: `variants` (overrides, or functions of the preset's MixedAE config returning a
    list of overrides) for `seeds` ('all' of the preset's seeds, 'first', or the first n); `draws` are the
    methods whose models the notebook draws or measures, for the first seed or, with `draw_seeds='all'`, every
    seed (their checkpoints must exist, not only their records)."""
    variants: tuple
    seeds: str | int = "all"
    draws: tuple = ()
    draw_seeds: str = "first"
    also: tuple = ()  # notebooks whose runs this one reads too
    curves: bool = False  # its runs record learning curves while they train (at the preset's curve_epochs)

    def runs(self, config, seeds) -> list[dict]:
        chosen = list(seeds)[:{"all": len(seeds), "first": 1}.get(self.seeds, self.seeds)]
        expanded = []
        for v in self.variants:
            expanded += v(config) if callable(v) else [v]
        return [{**v, "seed": s} for v in expanded for s in chosen]


HEADLINE = tuple({"method": m} for m in METHODS)
# Where homologous recognition comes from (docs/METHOD.md, "Homologous recognition"): the homologous loss on
# the attention logits or on the final features, the segment embedding at the encoder, the decoder or nowhere.
RECOGNITION_DESIGNS = {  # the default first
    "attention loss, weight 1, segment emb. at encoder (default)": {"hc_form": "attention", "seg_embed": "encoder"},
    "attention loss, weight 1, segment emb. at decoder": {"hc_form": "attention", "seg_embed": "decoder"},
    "attention loss, weight 1, no segment emb.": {"hc_form": "attention", "seg_embed": "none"},
    "attention loss, weight 0.1, segment emb. at encoder": {"hc_form": "attention", "seg_embed": "encoder",
                                                             "hc_weight": 0.1},
    "SupCon on features, weight 0.1, segment emb. at encoder (before)": {"hc_form": "features", "seg_embed": "encoder",
                                                                         "hc_weight": 0.1},
}
# The paper's remaining ablations, each beside the default design (the headline's MixedAE): the method as the
# paper writes it (docs/METHOD.md §4: SupCon on the final features, one shared [CLS], segment embedding at the
# encoder; the weight is our first reading's), the homologous loss switched off while TopK stays, and the
# mixing ratio r = 1/2 against the default 1/4.
ABLATIONS = {
    "the paper as written: SupCon on features (weight 0.1), one shared [CLS]": {"hc_form": "features", "hc_weight": 0.1,
                                                                             "cls_per_image": False},
    "homologous loss off (weight 0), TopK on": {"hc_weight": 0.0},
    "mixing ratio r = 1/2 (G = 2)": {"mix_ratio": 0.5},
}
EXPERIMENTS = {
    "00_tour": Experiment(variants=({"method": "mixedae"},), seeds="first", draws=("mixedae",)),
    "01_naive_mixing_vs_mae": Experiment(variants=HEADLINE, curves=True),
    "02_mutual_information": Experiment(
        variants=({"method": "naive", "group_by": "class"}, {"method": "mixedae", "group_by": "class"}),
        seeds="first", also=("01_naive_mixing_vs_mae",)),
    "03_choice_of_k": Experiment(
        variants=(lambda c: [{"method": "mixedae", "topk": k} for k in k_values(c)],), seeds="first",
        also=("recognition_default", "recognition_designs", "ablations")),
    # Notebook 03's section on the recognition designs: the default is the headline's MixedAE (every seed),
    # each other design one seed, on the preset's schedule.
    "recognition_default": Experiment(
        variants=({"method": "mixedae", **next(iter(RECOGNITION_DESIGNS.values()))},)),
    "recognition_designs": Experiment(
        variants=tuple({"method": "mixedae", **design} for design in list(RECOGNITION_DESIGNS.values())[1:]),
        seeds="first"),
    "ablations": Experiment(variants=tuple({"method": "mixedae", **a} for a in ABLATIONS.values()), seeds="first"),
    "04_compose_vs_full": Experiment(
        variants=({"method": "mixedae"}, {"method": "mixedae", "mix_mode": "full"},
                  lambda c: [{"method": "mixedae", "mix_mode": "full", "max_steps": equal_compute(c)[0]}]),
        seeds="first"),
    "05_attention_maps": Experiment(variants=(), draws=METHODS, draw_seeds="all", also=("01_naive_mixing_vs_mae",)),
}
NOTEBOOKS = tuple(name for name in EXPERIMENTS if name[0].isdigit())


def notebook_runs(notebook: str, config, seeds) -> list[dict]:
    """The runs `notebook` reads: its own and those of the notebooks it builds on."""
    experiment = EXPERIMENTS[notebook]
    runs = [r for other in experiment.also for r in EXPERIMENTS[other].runs(config, seeds)]
    runs += experiment.runs(config, seeds) + drawn_runs(notebook, seeds)
    return [r for i, r in enumerate(runs) if r not in runs[:i]]


def curve_runs(config, seeds) -> list[dict]:
    """The runs that record learning curves while they train."""
    return [r for e in EXPERIMENTS.values() if e.curves for r in e.runs(config, seeds)]


def drawn_runs(notebook: str | None, seeds) -> list[dict]:
    """The runs whose models `notebook` (None: any notebook) draws, first seed first."""
    notebooks = EXPERIMENTS if notebook is None else {notebook: EXPERIMENTS[notebook]}
    runs = [{"method": m, "seed": s} for e in notebooks.values()
            for s in (list(seeds) if e.draw_seeds == "all" else list(seeds)[:1]) for m in e.draws]
    runs = sorted(runs, key=lambda r: list(seeds).index(r["seed"]))  # stable: methods keep their order
    return [r for i, r in enumerate(runs) if r not in runs[:i]]


def planned_runs(config, seeds, canonical) -> list[dict]:
    """Every run of every notebook once, headline first. `canonical(overrides)` names a run (two overrides
    that make the same config, e.g. topk=None and topk=rN, are one run)."""
    plan, seen = [], set()
    for notebook in ("01_naive_mixing_vs_mae", *EXPERIMENTS):
        for run in EXPERIMENTS[notebook].runs(config, seeds):
            name = canonical(run)
            if name not in seen:
                seen.add(name)
                plan.append(run)
    return plan
