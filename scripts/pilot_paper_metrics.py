"""The pilot behind the paper metrics' recipes (docs/METHOD.md §9): the long preset's MAE seed 0, from its record's kept
weights, and its random init, under each fine-tuning and dense recipe tried, beside MAE's frozen probe on the same
labels. Writes results/tables/long/pilot_paper_metrics_{finetune,dense}.csv (with their provenance). On a 2-core CPU
the fine-tuning part takes about an hour and a half of one core, the dense part about half an hour; run them on an
otherwise idle machine. Each row is cached under runs/pilot_paper_metrics/, so an interrupted pilot resumes, and a
second process started beside the first takes the rows it has not begun (two side by side halve the wall time):

    .venv/bin/python scripts/pilot_paper_metrics.py [finetune|dense]
"""
import dataclasses
import functools
import sys
import time

import pandas as pd

from mixedae_core.data import dataset_of
from mixedae_core.evaluate import extract_features, linear_probe_accuracy, random_init_encoder
from mixedae_core.finetune import FinetuneRecipe, finetune_top1, labelled_subset
from mixedae_core.lab.runs import computed_once, run_dir_for, runs_root
from mixedae_core.lab.suite import Suite
from mixedae_core.transfer import dense_data, dense_miou

FINETUNE = [FinetuneRecipe(labels=6000, epochs=10, blr=1e-3, crop_scale=0.2),  # MAE's recipe as it is
            FinetuneRecipe(labels=3000, epochs=20, blr=1e-3, crop_scale=0.2),
            FinetuneRecipe(labels=6000, epochs=10, blr=1e-3, crop_scale=0.8),
            FinetuneRecipe(labels=6000, epochs=10, blr=1e-3, crop_scale=1.0),
            FinetuneRecipe(labels=6000, epochs=10, blr=3e-3, crop_scale=0.8),
            FinetuneRecipe(labels=6000, epochs=8, blr=3e-3, crop_scale=0.8)]  # the cpu presets' (transfer.py)
DENSE = [dict(dense_scenes=1000, dense_object_size=16), dict(dense_scenes=4000, dense_object_size=16),
         dict(dense_scenes=1000, dense_object_size=22), dict(dense_scenes=2500, dense_object_size=22)]


def models(suite: Suite):
    config = suite.config(method="mae", seed=0)
    return config, {"MAE seed 0": suite.model(method="mae", seed=0)[0], "random init": random_init_encoder(config, "cpu")}


def cache_of(config):
    return runs_root() / "pilot_paper_metrics" / run_dir_for(config).name


def cache_name(model: str, fields: dict) -> str:
    return "-".join([model.replace(" ", "_"), *map(str, fields.values())])


def shared_rows(cache, tasks: dict) -> list[dict]:
    """Each task's row (tasks: cache name -> compute), cached per row. A first pass computes the rows no other
    process has begun; a second waits for the others' and reads them."""
    for name, compute in tasks.items():
        computed_once(cache / f"{name}.json", compute, wait=False)
    return [computed_once(cache / f"{name}.json", compute) for name, compute in tasks.items()]


def timed(row: dict, metric) -> dict:
    t0 = time.time()
    return {**row, "value": metric(), "seconds": round(time.time() - t0)}


def finetune_rows(suite: Suite) -> list[dict]:
    config, encoders = models(suite)
    train, test = dataset_of(config, "train"), dataset_of(config, "test")

    cache = cache_of(config) / "finetune"

    def frozen_probe(name, model, labels):  # depends on the labels alone, not the recipe
        def probe():
            labelled = labelled_subset(train, labels)
            features = [extract_features(model, s.images, s.name)["mean"] for s in (labelled, test)]
            return {"accuracy": linear_probe_accuracy(features[0], labelled.labels, features[1], test.labels)}
        return computed_once(cache / f"probe-{cache_name(name, {'labels': labels})}.json", probe)["accuracy"]

    def row(recipe, name, model):
        return lambda: timed({"metric": "finetune_top1", "model": name, **dataclasses.asdict(recipe),
                              "frozen_mean_probe_same_labels": frozen_probe(name, model, recipe.labels)},
                             lambda: finetune_top1(model, train, test, recipe))

    return shared_rows(cache, {cache_name(name, dataclasses.asdict(recipe)): row(recipe, name, model)
                               for recipe in FINETUNE for name, model in encoders.items()})


def dense_rows(suite: Suite) -> list[dict]:
    config, encoders = models(suite)
    recipes = [dataclasses.replace(suite.eval_config, **fields) for fields in DENSE]
    scenes = functools.cache(lambda i: dense_data(config, recipes[i]))  # once per recipe, only where a row needs it

    def row(i, name, model):
        def compute():
            data = scenes(i)  # outside the timing: a row's seconds are the protocol's, not the scenes' drawing
            return timed({"metric": "dense_miou", "model": name, **DENSE[i]},
                         lambda: dense_miou(model, data, recipes[i]))
        return compute

    return shared_rows(cache_of(config) / "dense", {cache_name(name, fields): row(i, name, model)
                                                    for i, fields in enumerate(DENSE) for name, model in encoders.items()})


if __name__ == "__main__":
    part = sys.argv[1] if len(sys.argv) > 1 else "finetune"
    if part not in ("finetune", "dense"):
        sys.exit(f"usage: {sys.argv[0]} [finetune|dense] (got {part!r})")
    suite = Suite("long", notebook="pilot_paper_metrics", progress=False)
    rows = finetune_rows(suite) if part == "finetune" else dense_rows(suite)
    print(suite.save_table(pd.DataFrame(rows), f"pilot_paper_metrics_{part}"))
