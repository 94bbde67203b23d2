"""The pilot behind the paper metrics' recipes (docs/METHOD.md §9): the long preset's MAE seed 0, from its record's kept
weights, and its random init, under each fine-tuning and dense recipe tried, beside MAE's frozen probe on the same
labels. Writes results/tables/long/pilot_paper_metrics_{finetune,dense}.csv (with their provenance). On a 2-core CPU
the fine-tuning part takes about an hour and a half of one core, the dense part about half an hour; run them on an
otherwise idle machine, one process per part:

    .venv/bin/python scripts/pilot_paper_metrics.py [finetune|dense]
"""
import dataclasses
import sys
import time

import pandas as pd

from mixedae_core.data import dataset_of
from mixedae_core.evaluate import extract_features, linear_probe_accuracy, random_init_encoder
from mixedae_core.finetune import FinetuneRecipe, finetune_top1, labelled_subset
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


def finetune_rows(suite: Suite) -> list[dict]:
    config, encoders = models(suite)
    train, test = dataset_of(config, "train"), dataset_of(config, "test")
    rows, probes = [], {}
    for recipe in FINETUNE:
        labelled = labelled_subset(train, recipe.labels)
        for name, model in encoders.items():
            if (name, recipe.labels) not in probes:  # the frozen probe depends on the labels alone, not the recipe
                features = [extract_features(model, s.images, s.name)["mean"] for s in (labelled, test)]
                probes[name, recipe.labels] = linear_probe_accuracy(features[0], labelled.labels, features[1],
                                                                    test.labels)
            probe = probes[name, recipe.labels]
            t0 = time.time()
            rows.append({"metric": "finetune_top1", "model": name, **dataclasses.asdict(recipe),
                         "value": finetune_top1(model, train, test, recipe),
                         "frozen_mean_probe_same_labels": probe, "seconds": round(time.time() - t0)})
    return rows


def dense_rows(suite: Suite) -> list[dict]:
    config, encoders = models(suite)
    rows = []
    for fields in DENSE:
        ec = dataclasses.replace(suite.eval_config, **fields)
        data = dense_data(config, ec)
        for name, model in encoders.items():
            t0 = time.time()
            rows.append({"metric": "dense_miou", "model": name, **fields, "value": dense_miou(model, data, ec),
                         "seconds": round(time.time() - t0)})
    return rows


if __name__ == "__main__":
    part = sys.argv[1] if len(sys.argv) > 1 else "finetune"
    suite = Suite("long", notebook="pilot_paper_metrics", progress=False)
    rows = finetune_rows(suite) if part == "finetune" else dense_rows(suite)
    print(suite.save_table(pd.DataFrame(rows), f"pilot_paper_metrics_{part}"))
