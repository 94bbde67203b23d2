"""What each ablation notebook reads off its runs: the tables it builds from their records, the claims it
tests and the sentences of its conclusion. The notebooks call these and draw; a number they state is
computed here, once."""
import numpy as np
import pandas as pd
import torch

from ..evaluate import CONTROL, cls_maps, content_ratio, mixed_grouping, random_init_encoder
from ..runfiles import read_metrics
from ..switches import mixing_group_size, resolve
from ..objects import (TRIVIAL_MAPS, attention_region, clutter_regions, cluttered_test, mass_shares, patch_mask,
                       prior_maps)
from .claims import claim, mean_std, measure_check, per_seed, reported, unvalidated
from .experiments import ABLATIONS, EXPERIMENTS, RECOGNITION_DESIGNS
from .suite import INIT_SCORES, Suite
from .timing import TimedStep, alternated_step_times

METHOD_LABELS = {"mae": "MAE", "naive": "naive", "mixedae": "MixedAE"}


def final_topk_layers(steps: pd.DataFrame) -> list | None:
    """TopK accuracy per homologous layer at a run's last logged step (`Suite.metrics`); None without TopK."""
    return steps.iloc[-1]["topk_acc_layers"] if "topk_acc_layers" in steps else None


def recognition_notes(rows: pd.DataFrame) -> list[str]:
    """One line per run whose homologous recognition sat at chance or at its collapse value at the end."""
    flagged = rows[rows["warnings"].fillna("") != ""] if "warnings" in rows else rows.iloc[:0]
    return [f"- Run {r['run']} ({r['method']}, seed {r['seed']}): {r['warnings']}." for _, r in flagged.iterrows()]


# ------------------------------------------------------------------ 01: MAE vs naive mixing vs MixedAE
TRANSFER_COMPARISONS = (("Naive mixing hurts transfer: MAE > naive", "mae", "naive"),
                        ("Homologous recognition fixes it: MixedAE > naive", "mixedae", "naive"),
                        ("MixedAE beats MAE", "mixedae", "mae"))


def transfer_claims(rows: pd.DataFrame, baselines: pd.DataFrame) -> list[dict]:
    """The paper's three orderings of the methods under our diagnostic protocols, kNN and linear probe on the frozen
    [CLS], each read against the random-init encoder and raw pixels."""
    random_init, pixels = (baselines.set_index("baseline").loc[name] for name in ("random_init", "raw_pixels"))
    claims = []
    for metric, pixel_metric, label in (("knn_cls", "knn_pixels", "frozen [CLS] kNN"),
                                        ("probe_cls", "probe_pixels", "frozen [CLS] linear probe")):
        ref = f"random init {100 * random_init[metric]:.1f}, raw pixels {100 * pixels[pixel_metric]:.1f}"
        claims += [claim(f"{text} ({label})", per_seed(rows, metric, method=a), per_seed(rows, metric, method=b), +1,
                         METHOD_LABELS[a], METHOD_LABELS[b], reference=ref) for text, a, b in TRANSFER_COMPARISONS]
    return claims


# A model uses its input when its loss on identical hidden positions is at most this share of its content floor,
# and it has learned features when its kNN is this many points above its random initialisation.
USES_INPUT_RATIO, LEARNED_POINTS = 0.75, 10
# The learning curves' measurements: {column: label}.
CURVE_METRICS = {"content_ratio": "content ratio (loss / floor)", "knn_cls": "kNN [CLS]", "knn_mean": "kNN mean-pooled",
                 "probe_cls": "linear probe [CLS]", "topk_acc": "TopK accuracy (training batches)"}


def learning_curves(suite: Suite, rows: pd.DataFrame) -> pd.DataFrame:
    """One row per run of `rows` and point of its training (`epochs` trained): the random init (0), the points
    its probe recorded while it trained, and its final evaluation, with the CURVE_METRICS."""
    points = []
    for _, r in rows.iterrows():
        run = {"method": r["method"], "seed": r["seed"]}
        points.append({**run, "epochs": 0, **{k: r[f"init_{k}"] for k in INIT_SCORES}})
        metrics = read_metrics(suite.record(**run))
        topk = {m["step"]: m.get("topk_acc") for m in metrics if m["kind"] == "step"}
        points += [{**run, "epochs": m["epoch"] + 1, **{k: m[k] for k in INIT_SCORES},
                    "content_ratio": content_ratio(m), "topk_acc": topk.get(m["step"])}
                   for m in metrics if m["kind"] == "curve"]
        last_topk = next((v for v in reversed(topk.values()) if v is not None), None)
        points.append({**run, "epochs": r["epochs_run"], **{k: r[k] for k in (*INIT_SCORES, "content_ratio")},
                       "topk_acc": last_topk})
    return pd.DataFrame(points, columns=["method", "seed", "epochs", *CURVE_METRICS])


def readiness_notes(rows: pd.DataFrame) -> list[str]:
    """Whether every run uses its input (content ratio <= USES_INPUT_RATIO) and has learned features (kNN [CLS]
    and mean-pooled >= its seed's random init + LEARNED_POINTS): below either, method differences say little."""
    gain = pd.DataFrame({k: 100 * (rows[k] - rows[f"init_{k}"]) for k in ("knn_cls", "knn_mean")})
    ready = (rows["content_ratio"] <= USES_INPUT_RATIO) & (gain >= LEARNED_POINTS).all(axis=1)
    lines = [f"  - {r['method']} seed {r['seed']}: content ratio {r['content_ratio']:.3f}, kNN [CLS] "
             f"{gain.loc[i, 'knn_cls']:+.1f} and mean-pooled {gain.loc[i, 'knn_mean']:+.1f} points over its random "
             "init" + ("" if ready.loc[i] else " — **below the bar**") for i, r in rows.iterrows()]
    verdict = "every run passes" if ready.all() else f"{(~ready).sum()} of {len(rows)} runs do not"
    return [f"Do the models use their input and learn features (content ratio ≤ {USES_INPUT_RATIO}, kNN ≥ random "
            f"init + {LEARNED_POINTS} points on [CLS] and mean-pooled)? {verdict}:", *lines]


def transfer_notes(rows: pd.DataFrame, baselines: pd.DataFrame, claims: list[dict],
                   knn_spread: float | None) -> list[str]:
    """How large the method gaps are against the baselines, the content floor and the seed spread."""
    random_init, pixels = (baselines.set_index("baseline").loc[name] for name in ("random_init", "raw_pixels"))
    largest = max(abs(c["difference"]) for c in claims)
    mae_knn = rows[rows.method == "mae"]["knn_cls"].mean()
    notes = [f"Largest mean gap between methods: {largest:.1f} points.",
             f"MAE's kNN [CLS] is {100 * (mae_knn - random_init['knn_cls']):+.1f} points over its random initialisation "
             f"and {100 * (mae_knn - pixels['knn_pixels']):+.1f} over raw pixels."]
    below = (rows["floor_random"] - rows["shared_loss_random"]).groupby(rows["method"]).mean()
    notes.append("Content floor minus loss on identical hidden positions (how much the image lowers the loss): "
                 + ", ".join(f"{m} {v:+.4f}" for m, v in below.items())
                 + (". Close to zero: the decoders predict a position-dependent mean and barely use the image."
                    if below.max() < 0.05 * rows["floor_random"].mean() else "."))
    if knn_spread is not None and largest < 2 * knn_spread:
        notes.append("The method gaps are within two of the headline kNN's seed spreads: at this scale the experiment "
                     "does not separate the three methods, whatever the sign of the means.")
    return notes + readiness_notes(rows) + recognition_notes(rows)


# ------------------------------------------------------------------ 02: the mutual-information argument
LAYOUT_LABELS = {"random": "random", "class": "class", "views": "views", "same_image": "same image"}


def pretext_tables(suite: Suite) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one row per run: its loss on identical hidden positions beside its content floor and its sensitivity to
    random neighbours; one row per run and layout: the anchor's loss and its reliance on the neighbours),
    measured on the same test images for every run (evaluate.pretext_scores, in each run's record)."""
    runs, dose = [], []
    for run in suite.runs():
        row = suite.row(**run)
        base = {"method": run["method"], "trained on": run.get("group_by", "random"), "seed": run["seed"]}
        runs.append({**base, "shared loss": row["shared_loss_random"], "floor": row["floor_random"],
                     "below floor": row["floor_random"] - row["shared_loss_random"],
                     "sensitivity": row["dose_sensitivity"], "prediction change": row["dose_pred_change"]})
        dose += [{**base, "layout": label, "loss": row[f"dose_loss_{key}"], "reliance": row[f"dose_reliance_{key}"],
                  "floor": row["dose_floor"]} for key, label in LAYOUT_LABELS.items()]
    return pd.DataFrame(runs), pd.DataFrame(dose)


def pretext_claims(runs: pd.DataFrame, dose: pd.DataFrame) -> list[dict]:
    """The argument's predictions on the runs trained on random groups; a pretext difference is read against
    how far the compared models are below their content floor (the smaller of their means)."""
    random_runs, random_dose = (table[table["trained on"] == "random"] for table in (runs, dose))
    same_image = random_dose[random_dose.layout == "same image"]

    def floor_gap(*methods):
        return min(per_seed(random_runs, "below floor", method=m).mean() for m in methods)

    return [
        claim("Naive mixing makes the pretext easier: loss MAE > naive on identical hidden positions (random groups)",
              per_seed(random_runs, "shared loss", method="mae"), per_seed(random_runs, "shared loss", method="naive"), +1,
              "MAE", "naive", scale=1, unit="loss", floor_gap=floor_gap("mae", "naive")),
        claim("Dependent neighbours help naive mixing: naive's reliance, same image < random",
              per_seed(same_image, "reliance", method="naive"),
              per_seed(random_dose, "reliance", method="naive", layout="random"),
              -1, "same image", "random", scale=1, unit="loss", floor_gap=floor_gap("naive")),
        claim("Homologous attention blocks them: reliance on the same image, naive < MixedAE",
              per_seed(same_image, "reliance", method="naive"), per_seed(same_image, "reliance", method="mixedae"),
              -1, "naive", "MixedAE", scale=1, unit="loss", floor_gap=floor_gap("naive", "mixedae")),
        claim("Global attention reads random neighbours: prediction change naive > MixedAE",
              per_seed(random_runs, "prediction change", method="naive"),
              per_seed(random_runs, "prediction change", method="mixedae"), +1, "naive", "MixedAE", scale=1, unit=""),
    ]


def pretext_notes(runs: pd.DataFrame, dose: pd.DataFrame) -> list[str]:
    """MAE's reliance (zero by construction), each model's distance to its floor, and the same-class runs."""
    mae = dose[dose.method == "mae"]
    class_seeds = sorted(runs[runs["trained on"] == "class"].seed.unique().tolist())
    below = runs[runs["trained on"] == "random"].groupby("method")["below floor"].mean()
    class_reliance = dose[(dose["trained on"] == "class") & (dose.layout == "same image")] \
        .groupby("method")["reliance"].mean()
    return [f"- MAE's reliance is {mae['reliance'].abs().max():.2g} at most in every layout (zero by construction: "
            "a check of the measurement).",
            "- Below the floor (content floor - loss, random groups): " + ", ".join(
                f"{m} {v:+.4f}" for m, v in below.items())
            + ". A pretext difference larger than this gap cannot be read; such claims are marked at floor.",
            f"- Runs trained on same-class groups (seeds {class_seeds}) add the second axis: "
            + ", ".join(f"{m} same-image reliance {v:+.4f}" for m, v in class_reliance.items()) + "."]


# ------------------------------------------------------------------ 03: the choice of K
DEFAULT_DESIGN = next(iter(RECOGNITION_DESIGNS))
# the designs whose recognition over training the notebook draws: the default, and the design it replaced
DRAWN_DESIGNS = [name for name in RECOGNITION_DESIGNS if "(default)" in name or "(before)" in name]


def choice_of_k_runs(suite: Suite) -> list[tuple[dict, int]]:
    """(run, its K) of notebook 03's choice of K: K in {rN/2, rN, 2rN, N} (experiments.k_values)."""
    return [(run, resolve(suite.config(**run)).K)
            for run in EXPERIMENTS["03_choice_of_k"].runs(suite.config(method="mixedae"), suite.seeds)]


def topk_accuracy_curves(suite: Suite, k_runs: list[tuple[dict, int]]) -> pd.DataFrame:
    """TopK accuracy per layer at every logged step of each K's run."""
    return pd.DataFrame([{"K": k, "seed": run["seed"], "step": r["step"], "layer": layer, "topk_acc": acc}
                         for run, k in k_runs for _, r in suite.metrics(**run).iterrows()
                         for layer, acc in enumerate(r["topk_acc_layers"])])


def recognition_designs(suite: Suite) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one row per design and seed: its scores and its recognition at the last logged step beside their chance
    and perfect values; its recognition at every logged step and layer)."""
    rows, curves = [], []
    for name, design in RECOGNITION_DESIGNS.items():
        for run in suite.runs():
            if run != {"method": "mixedae", **design, "seed": run["seed"]}:
                continue
            refs = resolve(suite.config(**run)).recognition_references()
            steps = suite.metrics(**run)
            layers = final_topk_layers(steps)
            rows.append({"design": name, **suite.row(**run), "topk_acc": float(np.mean(layers)),
                         **{f"topk_acc_layer{i}": a for i, a in enumerate(layers)},
                         "loss_hc_last": steps.iloc[-1]["loss_hc"], "loss_hc_chance": refs["loss_hc_chance"],
                         "loss_hc_perfect": refs["loss_hc_perfect"], "topk_acc_chance": refs["topk_acc_chance"]})
            curves += [{"design": name, "seed": run["seed"], "step": r["step"], "layer": layer, "topk_acc": acc,
                        "loss_hc": r["loss_hc"], **refs}
                       for _, r in steps.iterrows() for layer, acc in enumerate(r["topk_acc_layers"])]
    return pd.DataFrame(rows), pd.DataFrame(curves)


def design_summary(designs: pd.DataFrame) -> pd.DataFrame:
    """Per design, mean ± std over its seeds of its recognition at the end, and its transfer."""
    layer_cols = [c for c in designs if c.startswith("topk_acc_layer")]
    return designs.groupby("design", sort=False).agg(
        seeds=("seed", "size"), topk_acc=("topk_acc", lambda v: mean_std(v, scale=1, digits=3)),
        **{c.replace("topk_acc_", ""): (c, "mean") for c in layer_cols},
        loss_hc=("loss_hc_last", lambda v: mean_std(v, scale=1, digits=3)), loss_hc_chance=("loss_hc_chance", "first"),
        loss_hc_perfect=("loss_hc_perfect", "first"), loss_rec=("loss_rec", lambda v: mean_std(v, scale=1, digits=4)),
        knn_cls=("knn_cls", lambda v: mean_std(v)))


def k_claims(rows: pd.DataFrame, designs: pd.DataFrame, config) -> list[dict]:
    """Homologous TopK against global attention, and the default design's TopK accuracy against chance."""
    s = resolve(config)
    default_k, global_k = s.K, s.patch_keys
    selected = per_seed(designs, "topk_acc", design=DEFAULT_DESIGN)
    return [
        claim(f"Homologous attention (K = {default_k}) beats global attention (K = {global_k}), frozen [CLS] kNN",
              per_seed(rows, "knn_cls", K=default_k), per_seed(rows, "knn_cls", K=global_k), +1,
              f"K={default_k}", "global"),
        claim(f"TopK selects an image's own patches above chance (K = {default_k}, mean over layers)",
              selected, np.full(len(selected), s.recognition_references()["topk_acc_chance"]), +1,
              "TopK acc.", "chance", scale=1, unit=""),
    ]


def ablation_table(suite: Suite) -> pd.DataFrame:
    """The default design and each of the paper's remaining ablations on the first seed, with naive mixing (what
    homologous recognition is to fix): transfer, final losses and TopK accuracy at the end (mean over layers)."""
    seed = suite.seeds[0]
    named = {DEFAULT_DESIGN: {"method": "mixedae", **RECOGNITION_DESIGNS[DEFAULT_DESIGN]}, **{
        name: {"method": "mixedae", **ablation} for name, ablation in ABLATIONS.items()}, "naive mixing": {"method": "naive"}}
    rows = []
    for name, run in named.items():
        config, steps = suite.config(**run), suite.metrics(**run, seed=seed)
        layers = final_topk_layers(steps)
        row, s = suite.row(**run, seed=seed), resolve(config)
        if s.loss_form is None:  # logged as 0, which would read as perfect recognition
            row["loss_hc"] = np.nan
        rows.append({"design": name, **row, "homologous_loss": s.loss_form or "none",
                     "topk_acc": float(np.mean(layers)) if isinstance(layers, list) else np.nan,
                     "topk_acc_chance": s.recognition_references()["topk_acc_chance"]
                     if config.method == "mixedae" else np.nan})
    return pd.DataFrame(rows)


def ablation_claims(table: pd.DataFrame) -> list[dict]:
    """The paper's direction for each ablation (one seed each: read them as directions, not as tests); the paper
    as written beside our default is our deviation, reported without a verdict."""
    knn = table.set_index("design")["knn_cls"]
    as_written, loss_off, half = ABLATIONS
    def vs(text, a, b, label_a, label_b):
        return claim(f"{text}, frozen [CLS] kNN", [knn[a]], [knn[b]], +1, label_a, label_b)
    deviation = 100 * (knn[DEFAULT_DESIGN] - knn[as_written])
    return [vs("The paper as written fixes naive mixing: as written > naive", as_written, "naive mixing", "as written",
               "naive"),
            vs("The homologous loss helps: default > loss off with TopK on", DEFAULT_DESIGN, loss_off, "default",
               "loss off"),
            vs("The paper's mixing ratio r = 1/4 beats r = 1/2", DEFAULT_DESIGN, half, "r = 1/4", "r = 1/2"),
            reported("Our default design vs the paper as written, kNN [CLS]",
                     f"default {100 * knn[DEFAULT_DESIGN]:.1f} vs as written {100 * knn[as_written]:.1f} "
                     f"({deviation:+.2f} points)", deviation, "our deviation from the paper (docs/METHOD.md §6), "
                     "not a claim of the paper")]


def k_notes(rows: pd.DataFrame, curves: pd.DataFrame, designs: pd.DataFrame, config, seed: int) -> list[str]:
    """The default K's final TopK accuracy per layer, the best K, and each design's TopK accuracy."""
    s = resolve(config)
    default_k, chance = s.K, s.recognition_references()["topk_acc_chance"]
    final = curves[curves.step == curves.step.max()]
    per_layer = final[final.K == default_k].groupby("layer")["topk_acc"].mean()
    best = designs.groupby("design", sort=False)["topk_acc"].mean()
    return [f"Final TopK accuracy per layer at K = {default_k} (seed {seed}): "
            + ", ".join(f"{a:.2f}" for a in per_layer) + f" (chance {chance:.2f}). Best kNN at K = "
            f"{rows.groupby('K')['knn_cls'].mean().idxmax()}.",
            "Designs, mean TopK accuracy over layers and seeds: "
            + "; ".join(f"{name} {v:.3f}" for name, v in best.items()) + f" (chance {chance:.3f}).",
            *recognition_notes(pd.concat([rows, designs]))]


# ------------------------------------------------------------------ 04: compose vs full mixing
COST_VARIANTS = {"MAE": dict(method="mae"), "naive": dict(method="naive"), "MixedAE compose": dict(method="mixedae"),
                 "MixedAE full": dict(method="mixedae", mix_mode="full")}


def step_costs(suite: Suite, timing_steps: int) -> tuple[dict, pd.DataFrame]:
    """({variant: median seconds per training step}, their table). The runs' own wall times were taken beside
    other runs of the campaign, so they cannot compare methods: here one process alternates the methods step
    by step on the same images (the training step that trains)."""
    batch = suite.config().batch_size
    step_seconds = alternated_step_times({name: TimedStep(suite.config(**v), batch, suite.torch_device())
                                          for name, v in COST_VARIANTS.items()}, timing_steps, warmup=2)
    return step_seconds, pd.DataFrame([{"variant": name, "batch": batch, "seconds_per_step": t, "img_per_s": batch / t,
                                        "ratio_to_mae": t / step_seconds["MAE"]} for name, t in step_seconds.items()])


def cost_claim(step_seconds: dict, batch: int, device: str) -> dict:
    """MixedAE's step time over MAE's. A number outside the paper's setting, not a verdict on it: small models
    spend a larger share of the step in attention and TopK than ViT-B/16 does (make bench's ViT-B/16 rows are
    the comparison)."""
    overhead = 100 * (step_seconds["MixedAE compose"] / step_seconds["MAE"] - 1)
    return reported("MixedAE adds little pre-training cost over MAE (paper: +3 % on GPU); training step time, "
                    "compose, methods alternated in one process",
                    f"{overhead:+.1f} % (MAE {1000 * step_seconds['MAE']:.1f} ms/step, MixedAE "
                    f"{1000 * step_seconds['MixedAE compose']:.1f} ms/step, batch {batch}, {device})", overhead,
                    "the paper's +3 % is for ViT-B/16 on GPUs (see make bench's ViT-B/16 rows)")


def compose_notes(rows: pd.DataFrame, step_seconds: dict, group_size: int, equal_steps: int,
                  equal_basis: str) -> list[str]:
    """Full mixing's cost per step and every setting's kNN [CLS]."""
    full_ratio = step_seconds["MixedAE full"] / step_seconds["MixedAE compose"]
    knn = {(mode, budget): 100 * per_seed(rows, "knn_cls", mode=mode, budget=budget).mean()
           for mode, budget in (("compose", "equal epochs"), ("full", "equal epochs"), ("full", "equal compute"))}
    return [f"- Full mixing costs {full_ratio:.2f}x compose per step here (its encoder sees G = {group_size} times "
            "the tokens).",
            f"- kNN [CLS]: compose {knn['compose', 'equal epochs']:.1f} %, full at equal epochs "
            f"{knn['full', 'equal epochs']:.1f} %, full at equal compute {knn['full', 'equal compute']:.1f} % "
            f"({equal_steps} steps: {equal_basis}; seeds {sorted(rows.seed.unique().tolist())}; "
            "the paper reports no compose-vs-full comparison we could check)."]


# ------------------------------------------------------------------ 05: attention maps and object awareness
OBJECT_VARIANTS = {"object_iou_cluttered": "cluttered", "object_iou_translated": "translated", "object_iou": "centred"}
TRIVIAL_BASELINES = [f"{name} map" for name in TRIVIAL_MAPS] + ["random_init"]


def measure_checks(reference: pd.DataFrame) -> list[str]:
    """The checks of the object-awareness measure that were measured: the oracle, and the positive control
    unless `control_epochs` is 0."""
    return [name for name in ("oracle map", CONTROL) if name in reference.index]


def self_attention_table(rows: pd.DataFrame) -> pd.DataFrame:
    """The [CLS] query's attention on its own key, one row per run and block."""
    return pd.DataFrame([{"method": r["method"], "seed": r["seed"], "block": b, "cls_self_attention": v}
                         for _, r in rows.iterrows() for b, v in enumerate(r["cls_self_attention"])])


def grouping_table(suite: Suite, n_images: int, mixedae_first_seed) -> pd.DataFrame:
    """Own-image attention per block of every drawn model on the same mixed test images, beside the random-init
    encoder and a positive control that groups for a known reason: `mixedae_first_seed` given its segment
    embedding back, which labels each patch's source."""
    config, seed = suite.config(), suite.seeds[0]
    _, raw, _ = suite.test_images(n_images, seed=4)  # fewer where the test set is smaller
    G = mixing_group_size(config)
    raw = raw[:len(raw) // G * G]
    noise = torch.rand(len(raw) // G, config.num_patches,
                       generator=torch.Generator().manual_seed(4)).to(raw.device)
    measured = [(r["method"], r["seed"], suite.model(**r)[0], False) for r in suite.drawn()]
    measured += [("random-init encoder", seed, random_init_encoder(config, raw.device), False),
                 ("MixedAE + segment emb. (positive control)", seed, mixedae_first_seed, True)]
    return pd.DataFrame([{"model": name, "seed": s, "block": b, "grouping": g} for name, s, model, segments in measured
                         for b, g in enumerate(mixed_grouping(model, raw, config.dataset_kind, noise, segments))])


MASS_REFERENCE_MAPS = ("intensity", "oracle")  # a uniform map puts each region's area share there: 1 by definition


def cls_mass_table(suite: Suite, n_images: int) -> pd.DataFrame:
    """Where the [CLS] attention read by the object measure puts its mass on `n_images` test images made cluttered
    among themselves (fragments from each other: not the records' cluttered images, the same for every model): one
    row per map (every drawn model and seed, the random-init encoder, the intensity and oracle maps) and region
    (object, fragments, blank): the mass share, the region's share of the image, their ratio (`enrichment`, 1: a
    uniform map), and `region_size`, the share of the patches in the region holding the measure's mass (the
    patches its IoU scores)."""
    config, ec = suite.config(), suite.eval_config
    _, raw, _ = suite.test_images(n_images, seed=5)
    images, object_pixels = cluttered_test(raw.cpu())
    regions = clutter_regions(images, object_pixels)
    areas = {region: mask.float().mean().item() for region, mask in regions.items()}

    def attention(model):
        return cls_maps(model, images, config.dataset_kind, ec.attention_layer, ec.batch_size)
    maps = [(r["method"], r["seed"], attention(suite.model(**r)[0])) for r in suite.drawn()]
    maps.append(("random-init encoder", suite.seeds[0], attention(random_init_encoder(config, suite.torch_device()))))
    priors = prior_maps(images, patch_mask(object_pixels, config.patch_size), config.patch_size)
    maps += [(f"{name} map", None, priors[name]) for name in MASS_REFERENCE_MAPS]
    rows = []
    for model, seed, m in maps:
        size = attention_region(m, ec.attention_mass).float().mean().item()
        for region, share in mass_shares(m, regions).items():
            share = share.mean().item()
            rows.append({"model": model, "seed": seed, "region": region, "mass_share": share,
                         "area_share": areas[region], "enrichment": share / areas[region], "region_size": size})
    return pd.DataFrame(rows)


def mass_notes(mass: pd.DataFrame | None, mass_of_region: float) -> list[str]:
    """Where each model's [CLS] mass goes on cluttered images, and how much of the image its scored region covers."""
    if mass is None:
        return []
    means = mass.groupby(["model", "region"], sort=False)[["enrichment", "region_size"]].mean()
    regions = list(mass["region"].unique())
    per_model = "; ".join(f"{model} " + " / ".join(f"{group.loc[(model, r), 'enrichment']:.2f}" for r in regions)
                          for model, group in means.groupby(level="model", sort=False))
    sizes = means.groupby(level="model", sort=False)["region_size"].mean()
    return [f"- Where the last-block [CLS] mass goes on cluttered images, mass share over area share "
            f"({' / '.join(regions)}; 1 = a uniform map; mean over seeds): {per_model}.",
            f"- The region holding {100 * mass_of_region:.0f} % of the mass covers, in % of the patches: "
            + "; ".join(f"{model} {100 * v:.0f}" for model, v in sizes.items())
            + " (a uniform map: 100, so its IoU is the object's share of the patches; a concentrated map whose region "
              "lies mostly off the object can score below it)."]


def _grouping_per_model_and_seed(grouping: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """(own-image attention per model and seed, mean over blocks; {control: its mean over seeds, in %})."""
    means = grouping.groupby(["model", "seed"], as_index=False)["grouping"].mean()
    controls = {name: 100 * group["grouping"].mean() for name, group in means.groupby("model")
                if name not in METHOD_LABELS}
    return means, controls


def object_claims(rows: pd.DataFrame, reference: pd.DataFrame, grouping: pd.DataFrame,
                  chance: float) -> tuple[list[dict], str]:
    """(the claims, the line on the measure's check): object IoU on cluttered images, without a verdict while
    the measure fails its check or the data has no object masks, and grouping by content on mixed inputs."""
    claims, check = object_iou_claims(rows, reference) if rows["object_iou_cluttered"].notna().any() \
        else unmeasured_object_claims()
    means, controls = _grouping_per_model_and_seed(grouping)
    claims.append(claim("Homologous recognition teaches grouping by content: own-image attention on mixed inputs, mean "
                        "over blocks, MixedAE > MAE (no segment embedding, global attention)",
                        per_seed(means, "grouping", model="mixedae"), per_seed(means, "grouping", model="mae"), +1,
                        "MixedAE", "MAE", unit="% of attention",
                        reference=f"chance {100 * chance:.1f}, " + ", ".join(f"{n} {v:.1f}" for n, v in controls.items())))
    return claims, check


OBJECT_CLAIM = "Homologous recognition makes pre-training object-aware: object IoU MixedAE > {} (cluttered)"
OBJECT_RIVALS = (("mae", "MAE"), ("naive", "naive"))
NO_MASKS = "the data has no object masks (objects.OBJECT_MASK_DATASETS)"


def object_iou_claims(rows: pd.DataFrame, reference: pd.DataFrame) -> tuple[list[dict], str]:
    """(the object IoU claims on cluttered images, the line on the measure's check): without a verdict while the
    measure fails its check."""
    cluttered = reference["object_iou_cluttered"]
    checks = measure_checks(reference)
    validated, check = measure_check(cluttered, TRIVIAL_BASELINES, checks)
    ref = ", ".join(f"{name} {100 * v:.1f}" for name, v in cluttered[TRIVIAL_BASELINES + checks].items())
    claims = [claim(OBJECT_CLAIM.format(label), per_seed(rows, "object_iou_cluttered", method="mixedae"),
                    per_seed(rows, "object_iou_cluttered", method=m), +1, "MixedAE", label, unit="IoU points",
                    reference=ref) for m, label in OBJECT_RIVALS]
    return (claims if validated else [unvalidated(c, "the object-awareness measure failed its check") for c in claims],
            check)


def unmeasured_object_claims() -> tuple[list[dict], str]:
    """(the object IoU claims, the line in their place) where the data has no object masks: not measured, so no
    verdict; the attention maps are still drawn."""
    claims = [{**reported(OBJECT_CLAIM.format(label), "not measured", float("nan"), NO_MASKS), "seeds": 0}
              for _, label in OBJECT_RIVALS]
    return claims, f"- Object awareness: not measured, {NO_MASKS}; the attention maps are drawn without a score."


def object_notes(rows: pd.DataFrame, self_attention: pd.DataFrame, grouping: pd.DataFrame, depth: int,
                 chance: float) -> list[str]:
    """Each method's object IoU per variant, its [CLS] attention on itself in the last block, its grouping."""
    means, controls = _grouping_per_model_and_seed(grouping)
    last_block = self_attention[self_attention.block == depth - 1]
    iou = rows.groupby("method")[list(OBJECT_VARIANTS)].mean()
    return ["- Mean object IoU per method (cluttered / translated / centred): " + ("; ".join(
                f"{m} " + " / ".join(f"{100 * r[c]:.1f}" for c in OBJECT_VARIANTS) for m, r in iou.iterrows())
                if iou.notna().any().any() else "not measured") + ".",
            "- [CLS] attention on itself, last block, mean over seeds: " + "; ".join(
                f"{m} {v:.2f}" for m, v in last_block.groupby("method")["cls_self_attention"].mean().items()) + ".",
            "- Grouping on mixed inputs, mean over blocks and seeds: " + "; ".join(
                f"{m} {100 * means[means.model == m]['grouping'].mean():.1f}" for m in METHOD_LABELS)
            + f" (chance {100 * chance:.1f}; " + ", ".join(f"{n} {v:.1f}" for n, v in controls.items()) + ")."]
