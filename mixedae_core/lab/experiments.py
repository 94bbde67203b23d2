"""What each notebook trains, written once: the campaign trains exactly these runs and the notebooks read
exactly these runs. A run is a dict of Config overrides on the preset (always with `method` and `seed`).

    EXPERIMENTS["03_choice_of_k"].runs(config, seeds)  ->  [{"method": "mixedae", "seed": 0, "topk": 9}, ...]

Values that depend on the preset's model (K in units of rN, full mixing's equal-compute step count) are
resolved from the preset's config, so every run carries explicit values.
"""
from dataclasses import dataclass

import torch

from ..data import training_batches
from ..model import METHODS


def k_values(config) -> list[int]:
    """Notebook 03's K values (keys incl. [CLS]): rN/2 + 1, the default rN + 1, 2rN + 1, N + 1 (global)."""
    N, rN = config.num_patches, config.num_patches // config.group_size
    return [rN // 2 + 1, rN + 1, 2 * rN + 1, N + 1]


def planned_steps(config) -> int:
    """Optimizer steps of a run of `config` (loads its training set's size, not the run)."""
    steps = config.epochs * training_batches(config, torch.device("cpu")).steps_per_epoch
    return steps if config.max_steps is None else min(steps, config.max_steps)


def equal_compute_steps(config) -> int:
    """Full mixing encodes G sequences per group where compose encodes one: 1/G of compose's steps."""
    return max(1, planned_steps(config) // config.group_size)


@dataclass(frozen=True)
class Experiment:
    """A notebook's runs: `variants` (overrides, or functions of the preset's MixedAE config returning a
    list of overrides) for `seeds` ('all' of the preset's seeds, or its 'first'); `draws` are the methods
    whose first-seed models the notebook draws (their checkpoints must exist, not only their records)."""
    variants: tuple
    seeds: str = "all"
    draws: tuple = ()
    also: tuple = ()  # notebooks whose runs this one reads too

    def runs(self, config, seeds) -> list[dict]:
        chosen = list(seeds) if self.seeds == "all" else list(seeds)[:1]
        expanded = []
        for v in self.variants:
            expanded += v(config) if callable(v) else [v]
        return [{**v, "seed": s} for v in expanded for s in chosen]


HEADLINE = tuple({"method": m} for m in METHODS)
EXPERIMENTS = {
    "00_tour": Experiment(variants=({"method": "mixedae"},), seeds="first", draws=("mixedae",)),
    "01_naive_mixing_vs_mae": Experiment(variants=HEADLINE),
    "02_mutual_information": Experiment(
        variants=({"method": "naive", "group_by": "class"}, {"method": "mixedae", "group_by": "class"}),
        seeds="first", also=("01_naive_mixing_vs_mae",)),
    "03_choice_of_k": Experiment(
        variants=(lambda c: [{"method": "mixedae", "topk": k} for k in k_values(c)],), seeds="first"),
    "04_compose_vs_full": Experiment(
        variants=({"method": "mixedae"}, {"method": "mixedae", "mix_mode": "full"},
                  lambda c: [{"method": "mixedae", "mix_mode": "full", "max_steps": equal_compute_steps(c)}]),
        seeds="first"),
    "05_attention_maps": Experiment(variants=(), draws=METHODS, also=("01_naive_mixing_vs_mae",)),
}
NOTEBOOKS = tuple(EXPERIMENTS)


def notebook_runs(notebook: str, config, seeds) -> list[dict]:
    """The runs `notebook` reads: its own and those of the notebooks it builds on."""
    experiment = EXPERIMENTS[notebook]
    runs = [r for other in experiment.also for r in EXPERIMENTS[other].runs(config, seeds)]
    runs += experiment.runs(config, seeds) + drawn_runs(notebook, seeds)
    return [r for i, r in enumerate(runs) if r not in runs[:i]]


def drawn_runs(notebook: str | None, seeds) -> list[dict]:
    """The first-seed runs whose models `notebook` (None: any notebook) draws."""
    notebooks = EXPERIMENTS if notebook is None else {notebook: EXPERIMENTS[notebook]}
    methods = dict.fromkeys(m for e in notebooks.values() for m in e.draws)
    return [{"method": m, "seed": list(seeds)[0]} for m in methods]


def planned_runs(config, seeds, canonical) -> list[dict]:
    """Every run of every notebook once, headline first. `canonical(overrides)` names a run (two overrides
    that make the same config, e.g. topk=None and topk=rN + 1, are one run)."""
    plan, seen = [], set()
    for notebook in ("01_naive_mixing_vs_mae", *NOTEBOOKS):
        for run in EXPERIMENTS[notebook].runs(config, seeds):
            name = canonical(run)
            if name not in seen:
                seen.add(name)
                plan.append(run)
    return plan
