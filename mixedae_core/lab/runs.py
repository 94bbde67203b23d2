"""Where runs live: the run cache (a run directory per config, trained, resumed or reused), the evaluation
of a finished run into its eval.json, and its record for results/.

A run's record, results/runs/<preset>/<run name>/, holds its config.json, metrics.jsonl, summary.json and
eval.json, and its kept weights (model.safetensors: the model, fp32, no optimizer state), small enough to commit.
Tables come from records, so committed records regenerate every table without training, and a changed
evaluation re-evaluates a record from its kept weights, in place. A preset run on another dataset keeps its records, tables, figures
and notebooks apart, in results/*/<preset>-<dataset>/ (`results_name`).
"""
import contextlib
import dataclasses
import hashlib
import json
import os
import re
import sys
import time
from pathlib import Path

from ..config import PRESETS, Config, EvalConfig, ModelConfig
from ..evaluate import CONTROL, CONTROL_VERSION, baseline_scores, evaluate_model, mae_twin, supervised_control
from ..objects import has_object_masks
from ..transfer import DENSE_CONTROL, dense_control, dense_measured, transfer_baselines, transfer_scores
from ..runfiles import (CHECKPOINT, CONFIG, METRICS, SUMMARY, WEIGHTS, FileLock, RunFileError, has_model,
                        load_model, read_checkpoint, read_json, run_finished, save_weights, write_text_atomic)
from ..train import CODE_VERSION, available_device, train
from .provenance import REPO, provenance, stamp

EVAL_VERSION = "5"  # bump when a change alters what evaluate_run computes: cached eval.json is recomputed
RECORD_FILES = (CONFIG, METRICS, SUMMARY, "eval.json")  # eval.json last: it marks a whole record


# ------------------------------------------------------------------------------------------ run cache
def run_key(config: Config, code_version: str, fields=None) -> str:
    """A short hash of everything that determines a run's result (or of the named `fields` only)."""
    fields = {k: v for k, v in config.result_fields().items() if fields is None or k in fields}
    blob = json.dumps({"code": code_version, **fields}, sort_keys=True, default=list)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def runs_root() -> Path:
    return Path(os.environ.get("MIXEDAE_RUNS", REPO / "runs"))


def run_dir_for(config: Config, root=None) -> Path:
    return Path(root or runs_root()) / f"{config.method}-{run_key(config, CODE_VERSION)}"


def ensure_run(config: Config, root=None, progress: bool = True, probe=None) -> Path:
    """The finished run of `config` with its checkpoint: cached if it exists, resumed if it was interrupted,
    else trained (also when its checkpoint was deleted), with `train()`'s learning-curve `probe` if given."""
    run_dir = run_dir_for(config, root)
    if not run_finished(run_dir):
        train(config, run_dir, resume=True, progress=progress, stamp=stamp, probe=probe)
    return run_dir


# ------------------------------------------------------------------------------------------ evaluation
def recipe_key(ec: EvalConfig) -> dict:
    return {"eval_version": EVAL_VERSION, **dataclasses.asdict(ec)}


def eval_key(config: Config, ec: EvalConfig) -> dict:
    """What the evaluation of `config`'s run computed: the recipe, and the positive control's design where its
    record carries the control (a new design re-evaluates that record only)."""
    key = recipe_key(ec)
    return {**key, "control_version": CONTROL_VERSION} if records_control(config, ec) else key


def baselines_path(config: Config, ec: EvalConfig, root, kind: str = "") -> Path:
    """Where the baselines (kind "control-v<CONTROL_VERSION>-": the positive control) of `config`'s (sizes, data, seed, recipe) are
    cached under `root`/baselines."""
    depends_on = {f.name for f in dataclasses.fields(ModelConfig)} | {"dataset", "synthetic_size", "seed", "device",
                                                                      "precision"}
    # the baselines never mix (the random init is scored without pretext measurements): every ratio shares them
    twin = dataclasses.replace(mae_twin(config), mix_ratio=ModelConfig.mix_ratio)
    key = run_key(twin, EVAL_VERSION + json.dumps(recipe_key(ec)), fields=depends_on)
    return Path(root) / "baselines" / f"{kind}{key}.json"


def computed_once(path: Path, compute, wait: bool = True) -> dict | None:
    """`compute()`'s result, cached at `path`: runs side by side share it (the second waits and reads the first's;
    without `wait` it gets None while another process computes it, and can take other work meanwhile)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(FileLock(path.with_suffix(".lock"), wait=wait))
        except RunFileError:  # refused: only without wait
            return None
        if path.exists():
            return json.loads(path.read_text())
        result = compute()
        write_text_atomic(path, json.dumps(result, indent=1))
    return result


def records_control(config: Config, ec: EvalConfig) -> bool:
    """Whether `config`'s record carries the supervised positive control: the MAE run of the control seed, where
    the notebooks read every baseline (Suite.reference), on data with object masks. Only that run waits for the
    control's training (several pre-trainings long); the other runs of its seed do not."""
    return bool(ec.control_epochs) and config.seed == ec.control_seed and config.method == "mae" and \
        has_object_masks(config.dataset)


def cached_baselines(config: Config, ec: EvalConfig, device, root, progress: bool = False) -> dict:
    """`evaluate.baseline_scores`, computed once per (sizes, data, seed, recipe) under `root`/baselines, since
    every run of a comparison shares them, and the positive control where `records_control`."""
    result = computed_once(baselines_path(config, ec, root), lambda: all_baselines(config, ec, device, progress))
    if records_control(config, ec):
        result[CONTROL] = computed_once(baselines_path(config, ec, root, f"control-v{CONTROL_VERSION}-"),
                                        lambda: supervised_control(config, ec, device, progress))
        if dense_measured(config, ec):
            result[DENSE_CONTROL] = computed_once(baselines_path(config, ec, root, "dense-control-"),
                                                  lambda: dense_control(config, ec, device, progress))
    return result


def all_baselines(config: Config, ec: EvalConfig, device, progress: bool = False) -> dict:
    """`evaluate.baseline_scores` with the paper metrics' baselines (`transfer.transfer_baselines`) merged in."""
    result = baseline_scores(config, ec, device, progress)
    for name, scores in transfer_baselines(config, ec, device, progress).items():
        result[name] = {**result.get(name, {}), **scores}
    return result


def evaluate_run(run_dir, ec: EvalConfig | None = None, device: str | None = None, progress: bool = True,
                 baselines_root=None) -> dict:
    """eval.json of a finished run, computed once per evaluation recipe (cached in the run directory).
    scores: {'encoder': ..., 'random_init': ..., 'raw_pixels': ...} (baselines when ec.baselines)."""
    ec = ec or EvalConfig()
    run_dir = Path(run_dir)
    path = run_dir / "eval.json"
    if path.exists():
        try:
            cached = read_json(path)
        except RunFileError as err:  # a cache: computed again
            print(f"note: {err}; computing it again", file=sys.stderr)
            cached = {}
        if "config" in cached and cached.get("eval") == eval_key(Config.from_dict(cached["config"]), ec):
            return cached
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir} does not exist")
    if not ((run_dir / CHECKPOINT).exists() or (run_dir / WEIGHTS).exists()):
        raise FileNotFoundError(f"{run_dir} holds no checkpoint.pt and no {WEIGHTS}: is it a run directory?")
    if not (run_dir / SUMMARY).exists():
        raise FileNotFoundError(f"{run_dir} has not finished (no summary.json): resume it first "
                                "(python -m mixedae_core pretrain --out RUN_DIR --resume ...)")
    model, config = load_model(run_dir, "cpu")  # the run's config picks the device
    dev = available_device(device or config.device)
    if not -config.depth <= ec.attention_layer < config.depth:
        raise ValueError(f"attention_layer {ec.attention_layer} is not a block of this encoder (depth {config.depth}: "
                         f"0..{config.depth - 1}, or -1 for the last)")
    model = model.to(dev)
    noise_seeds = tuple(range(ec.noise_seeds)) if records_control(config, ec) else (0,)
    clock = time.perf_counter()
    frozen = evaluate_model(model, config, ec, progress)
    seconds, clock = {"frozen": time.perf_counter() - clock}, time.perf_counter()
    transfer = transfer_scores(model, config, ec, noise_seeds, progress)
    seconds["transfer_per_seed"] = (time.perf_counter() - clock) / len(noise_seeds)
    scores = {"encoder": frozen | transfer}
    if ec.baselines:  # a run directory's neighbours share them; a record's go to the run cache, never into results/
        default_root = runs_root() if not (run_dir / CHECKPOINT).exists() else run_dir.parent
        scores.update(cached_baselines(config, ec, dev, baselines_root or default_root, progress))
    # the cost of evaluating this encoder (baselines are cached across runs, so not counted); on a busy machine
    # these are upper bounds
    result = {"run": run_dir.name, "eval": eval_key(config, ec), "config": config.to_dict(), "scores": scores,
              "seconds": {k: round(v, 1) for k, v in seconds.items()}, "provenance": provenance(dev)}
    write_text_atomic(path, json.dumps(result, indent=1))
    return result


# ------------------------------------------------------------------------------------------ records
def results_name(preset: str, dataset: str | None = None) -> str:
    """The folder, under results/runs, tables, figures and notebooks, of a preset's suite on `dataset`: the
    preset's name on its own dataset (None), else <preset>-<dataset>, an image folder named by its last part
    and a hash of its path (two folders may share a name), so that no two datasets share a table."""
    if dataset is None or dataset == PRESETS[preset].train["dataset"]:
        return preset
    kind, _, path = dataset.partition(":")
    if not path:
        return f"{preset}-{kind}"
    name = re.sub(r"[^\w.-]", "_", Path(path).resolve().name)
    return f"{preset}-{name}-{hashlib.sha256(path.encode()).hexdigest()[:6]}"


def record_is_current(record: Path, ec: EvalConfig) -> bool:
    if not all((record / name).exists() for name in (*RECORD_FILES, WEIGHTS)):
        return False
    evaluation = json.loads((record / "eval.json").read_text())
    return evaluation.get("eval") == eval_key(Config.from_dict(evaluation["config"]), ec)


def export_record(run_dir: Path, record: Path):
    """The run's record files and its kept weights (from its checkpoint) in `record`."""
    record.mkdir(parents=True, exist_ok=True)
    save_weights(read_checkpoint(run_dir)["model"], record / WEIGHTS)
    for name in RECORD_FILES:
        write_text_atomic(record / name, (Path(run_dir) / name).read_text())


def record_has_model(record: Path) -> bool:
    """A record with its kept weights, from which it can be re-evaluated and its model drawn without training."""
    return has_model(record) and (record / CONFIG).exists()
