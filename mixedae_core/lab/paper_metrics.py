"""The paper's own metrics in notebooks 01 and 05: fine-tuning top-1 and dense mIoU (mixedae_core/transfer.py), each
claim named by its protocol and read against its floor, its baselines, the metric's own noise and its power line."""
import numpy as np
import pandas as pd

from ..transfer import DENSE_CONTROL
from .claims import claim, per_seed, reported, unvalidated
from .findings import METHOD_LABELS, TRANSFER_COMPARISONS
from .suite import Suite

FINETUNE_PROTOCOL = "fine-tuning top-1, end to end, pooled, low-label"
DENSE_PROTOCOL = "dense mIoU, segmentation fine-tuned end to end, patch level"
NOT_MEASURED = "the records were evaluated without it (its recipe is off for this preset)"


def paper_metric_claims(rows: pd.DataFrame, baselines: pd.DataFrame, metric: str, protocol: str,
                        floor_name: str = "random_init") -> list[dict]:
    """The paper's three orderings of the methods (TRANSFER_COMPARISONS) on `metric`, read against the same recipe
    from the random init (`floor_name`'s row of `baselines`)."""
    if rows[metric].isna().any():
        return [reported(f"{text} ({protocol})", "not measured", float("nan"), NOT_MEASURED)
                for text, _, _ in TRANSFER_COMPARISONS]
    floor = baselines.set_index("baseline").loc[floor_name, metric]
    return [claim(f"{text} ({protocol})", per_seed(rows, metric, method=a), per_seed(rows, metric, method=b), +1,
                  METHOD_LABELS[a], METHOD_LABELS[b], reference=f"same recipe from the random init {100 * floor:.1f}")
            for text, a, b in TRANSFER_COMPARISONS]


def noise_evaluation(suite: Suite) -> dict | None:
    """The record that carries the paper metrics' own noise: the control seed's MAE run, if the suite has that seed."""
    seed = suite.eval_config.control_seed
    return suite.evaluation(method="mae", seed=seed) if seed in suite.seeds else None


def noise_notes(rows: pd.DataFrame, evaluation: dict | None) -> list[str]:
    """Each paper metric's own noise (one checkpoint fine-tuned with several seeds: `noise_evaluation`) beside the
    headline seed spread of that metric."""
    if evaluation is None:
        return []
    encoder, notes = evaluation["scores"]["encoder"], []
    for metric, label in (("finetune_top1", "fine-tuning top-1"), ("dense_miou", "dense mIoU")):
        if f"{metric}_seeds" not in encoder or rows[metric].isna().any():
            continue
        noise = 100 * np.std(encoder[f"{metric}_seeds"], ddof=1)
        spread = 100 * rows.groupby("method")[metric].std(ddof=1).max()
        notes.append(f"- {label}: the recipe's own noise on one checkpoint ({len(encoder[f'{metric}_seeds'])} "
                     f"fine-tuning seeds) is {noise:.2f} points (sd), the largest seed spread of a method {spread:.2f}.")
    return notes


def dense_claims(rows: pd.DataFrame, reference: pd.DataFrame) -> tuple[list[dict], str]:
    """(the dense claims, the line on the measure's check): the measure holds when its positive control beats every
    method and every method beats raw pixels; the claims are reported without a verdict where it does not."""
    claims = paper_metric_claims(rows, reference.reset_index(), "dense_miou", DENSE_PROTOCOL)
    if rows["dense_miou"].isna().any() or DENSE_CONTROL not in reference.index:
        return claims, f"- Dense transfer: not measured ({NOT_MEASURED}), or no positive control in the records."
    dense = reference["dense_miou"]
    means = rows.groupby("method")["dense_miou"].mean()
    holds = dense[DENSE_CONTROL] > means.max() and means.min() > dense["raw_pixels"]
    over_init = ", ".join(f"{METHOD_LABELS[m]} {100 * (v - dense['random_init']):+.1f}" for m, v in means.items())
    check = (f"- Check of the dense measure: positive control {100 * dense[DENSE_CONTROL]:.1f} > every method "
             f"(best {100 * means.max():.1f}) > raw pixels {100 * dense['raw_pixels']:.1f}: "
             f"**{'holds' if holds else 'does not hold'}**. Methods over their random init "
             f"({100 * dense['random_init']:.1f}): {over_init} points.")
    return (claims if holds else [unvalidated(c, "the dense measure failed its check") for c in claims]), check
