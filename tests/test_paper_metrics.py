"""The fine-tuning and dense claims of notebooks 01 and 05, on small hand-made records."""
import math

import pandas as pd

from mixedae_core.lab.paper_metrics import (DENSE_PROTOCOL, FINETUNE_PROTOCOL, dense_claims, noise_notes,
                                            paper_metric_claims)
from mixedae_core.transfer import DENSE_CONTROL


def rows(values: dict) -> pd.DataFrame:
    """{method: [value per seed]} -> a notebook's rows, both paper metrics set to those values."""
    return pd.DataFrame([{"method": m, "seed": s, "finetune_top1": v, "dense_miou": v}
                         for m, per_seed in values.items() for s, v in enumerate(per_seed)])


HEADLINE = {"mae": [0.80, 0.81, 0.82], "naive": [0.70, 0.73, 0.71], "mixedae": [0.85, 0.87, 0.86]}
BASELINES = pd.DataFrame([{"baseline": "random_init", "finetune_top1": 0.6, "dense_miou": 0.2},
                          {"baseline": "raw_pixels", "dense_miou": 0.1},
                          {"baseline": DENSE_CONTROL, "dense_miou": 0.95}])


def test_the_three_orderings_name_their_protocol_and_floor():
    claims = paper_metric_claims(rows(HEADLINE), BASELINES, "finetune_top1", FINETUNE_PROTOCOL)
    assert [c["measured"].split()[0] for c in claims] == ["MAE", "MixedAE", "MixedAE"]
    assert all(FINETUNE_PROTOCOL in c["claim"] and "random init 60.0" in c["reference"] for c in claims)
    assert [round(c["difference"], 6) for c in claims] == [round(100 * v, 6) for v in (29 / 300, 44 / 300, 0.05)]
    assert all(c["detectable_gap"] > 0 for c in claims)
    same_gap = rows({"mae": [0.8, 0.81, 0.82], "naive": [0.7, 0.71, 0.72], "mixedae": [0.9, 0.91, 0.92]})
    assert all(math.isnan(c["detectable_gap"]) for c in paper_metric_claims(same_gap, BASELINES, "finetune_top1",
                                                                            FINETUNE_PROTOCOL))


def test_records_without_the_metric_give_no_verdict():
    missing = rows(HEADLINE).assign(finetune_top1=math.nan)
    claims = paper_metric_claims(missing, BASELINES, "finetune_top1", FINETUNE_PROTOCOL)
    assert all(c["verdict"].startswith("reported, no verdict") for c in claims)


def test_the_dense_claims_are_read_only_where_the_control_and_raw_pixels_bracket_the_methods():
    reference = BASELINES.set_index("baseline")
    claims, check = dense_claims(rows(HEADLINE), reference)
    assert "**holds**" in check and all("no verdict" not in c["verdict"] for c in claims)
    assert all(DENSE_PROTOCOL in c["claim"] for c in claims)
    weak_control = reference.assign(dense_miou=reference["dense_miou"].replace(0.95, 0.5))
    claims, check = dense_claims(rows(HEADLINE), weak_control)
    assert "does not hold" in check and all("failed its check" in c["verdict"] for c in claims)
    above_pixels = reference.assign(dense_miou=reference["dense_miou"].replace(0.1, 0.75))
    assert "does not hold" in dense_claims(rows(HEADLINE), above_pixels)[1]


def test_the_noise_note_sets_the_recipes_noise_beside_the_seed_spread():
    evaluation = {"scores": {"encoder": {"finetune_top1_seeds": [0.80, 0.80, 0.83]}}}
    (note,) = noise_notes(rows(HEADLINE), evaluation)
    assert noise_notes(rows(HEADLINE), None) == []
    assert "3 fine-tuning seeds" in note and "1.73 points" in note and "spread of a method 1.53" in note
