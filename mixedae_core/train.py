"""Pre-training: `train(config, run_dir)`, from one CPU core to torchrun on many GPUs.

The run directory's files are described in runfiles.py. Every random draw of step s (batch order, crops,
flips, masking or mixing noise) comes from generators seeded with (seed, epoch) or (seed, s) and is drawn
for the whole global batch on every process, which then takes its own shard. So a resumed run, and a run
on any number of processes, sees exactly the batches of one uninterrupted single-process run (for
device-resident datasets). Checkpoints, at every epoch's end and every `checkpoint_minutes` inside an epoch,
hold the loop state and the RNG, so a run resumed from any of them ends with the weights and metrics of the
uninterrupted run, bit for bit.
"""
import contextlib
import json
import os
import platform
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from .config import LEGACY_VALUES, Config, device_name_error
from .data import training_batches
from .model import build_model
from .switches import resolve
from .runfiles import (CHECKPOINT, CONFIG, METRICS, SUMMARY, RunFileError, run_lock, read_checkpoint, read_metrics,
                       save_atomic, write_text_atomic)

CODE_VERSION = "1"  # bump when a change alters what a run computes: cached runs are then retrained
NO_WEIGHT_DECAY = ("cls_token", "mask_token", "pos_embed", "decoder_pos_embed", "seg_embed")
LOSSES = ("loss", "loss_rec", "loss_hc")


class NonFiniteLossError(RuntimeError):
    pass


class RunExistsError(RuntimeError):
    pass


# ------------------------------------------------------------------------------------- devices, processes
def available_device(name: str, local_rank: int = 0) -> torch.device:
    """The device `name` (auto, cpu, cuda, cuda:N) names on this machine; a ValueError if it is not here."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if device_name_error(name):
        raise ValueError(device_name_error(name))
    if name.startswith("cuda"):
        visible = torch.cuda.device_count()
        if not visible:
            raise ValueError(f"device={name!r} but no CUDA device is visible here; use --device cpu")
        index = local_rank if name == "cuda" else int(name[5:])
        if index >= visible:
            raise ValueError(f"device={name!r} but only {visible} CUDA device(s) are visible (cuda:0..{visible - 1})")
        return torch.device(f"cuda:{index}")
    return torch.device("cpu")


def resolve_device(config: Config, local_rank: int = 0) -> torch.device:
    return available_device(config.device, local_rank)


def describe_device(device) -> str:
    """'NVIDIA H100 80GB HBM3' or 'CPU x86_64 (2 threads)': what a timing was measured on."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.machine()} ({torch.get_num_threads()} threads)"


def distributed_context(config: Config):
    """(rank, world size, device) from torchrun's environment; initialises the process group
    (NCCL for CUDA runs, gloo for CPU runs)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(config, local_rank)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def autocast(device: torch.device, precision: str) -> contextlib.ExitStack:
    """The forward's precision context: bf16 autocast, or nothing for fp32. On a CPU the attention runs on
    SDPA's math backend under bf16: the fused CPU kernel's bf16 backward made the whole step slower than fp32's
    (docs/METHOD.md, "Precision")."""
    stack = contextlib.ExitStack()
    if precision == "bf16":
        stack.enter_context(torch.autocast(device.type, dtype=torch.bfloat16))
        if device.type == "cpu":
            stack.enter_context(sdpa_kernel(SDPBackend.MATH))
    return stack


# ------------------------------------------------------------------------------------- schedule, optimiser
def lr_schedule(lr: float, min_lr: float, total_steps: int, warmup_steps: int) -> np.ndarray:
    """Per-step learning rate: linear warm-up from 0, then half-cosine to min_lr (MAE's, per iteration)."""
    warmup = min(warmup_steps, total_steps)
    steps = np.arange(total_steps, dtype=np.float64)
    progress = (steps - warmup) / max(total_steps - warmup, 1)
    cosine = min_lr + (lr - min_lr) * 0.5 * (1 + np.cos(np.pi * progress))
    return np.where(steps < warmup, lr * steps / max(warmup, 1), cosine)


def param_groups(model: torch.nn.Module, weight_decay: float):
    """AdamW groups: no weight decay on norms, biases, position/segment embeddings and tokens."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name in NO_WEIGHT_DECAY else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, betas=(0.9, 0.95)):
    """AdamW over `param_groups`; the fused kernel on CUDA."""
    fused = next(model.parameters()).device.type == "cuda"
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=betas, fused=fused)


class TrainStep:
    """One optimizer step of a pre-training model: forward and backward over the micro-batches of a
    global batch (in the config's precision), AdamW. Training, the timing of methods and the benchmarks all
    step through this one class, so they time what trains."""

    def __init__(self, model, config: Config, ddp: DistributedDataParallel | None = None,
                 compile_model: bool = False):
        self.model, self.config = model, config
        self.device = next(model.parameters()).device
        self.optimizer = make_optimizer(model, config.lr, config.weight_decay, (config.beta1, config.beta2))
        forward = ddp or model
        self.forward = torch.compile(forward) if compile_model else forward

    def __call__(self, micro_batches, lr: float, diagnostics: bool = False) -> dict[str, torch.Tensor]:
        """Returns the losses (and, with `diagnostics`, MixedAE's TopK accuracy per homologous layer), each
        the mean over the micro-batches, as tensors on the device: reading them is up to the caller."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        parts = {}
        for i, (images, noise) in enumerate(micro_batches):
            last = i == len(micro_batches) - 1
            no_sync = self.forward.no_sync if isinstance(self.forward, DistributedDataParallel) and not last \
                else contextlib.nullcontext
            with no_sync(), autocast(self.device, self.config.precision):
                out = self.forward(images, noise=noise, diagnostics=diagnostics and self.config.method == "mixedae")
            (out.loss / len(micro_batches)).backward()
            values = {k: getattr(out, k).detach().float() for k in LOSSES}
            if out.topk_acc is not None:
                values["topk_acc_layers"] = out.topk_acc.detach().float()
            for k, v in values.items():
                parts[k] = parts.get(k, 0) + v / len(micro_batches)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return parts


# ------------------------------------------------------------------------------------- logging, stopping
def recognition_warnings(config: Config, loss_hc: float, topk_acc_layers) -> list[str]:
    """Sentences for a MixedAE run whose homologous recognition sits where chance puts it: TopK accuracy
    (mean over layers) within 10 % of the way from chance to 1 (where K selects at all), or loss_hc within
    10 % of the way from its chance value to its perfect value. Empty for other methods and for a run that
    recognises."""
    if config.method != "mixedae":
        return []
    s = resolve(config)
    refs, out = s.recognition_references(), []
    if topk_acc_layers and s.kept_keys is not None:  # a K that keeps every key is at chance by design
        mean = sum(topk_acc_layers) / len(topk_acc_layers)
        if mean < refs["topk_acc_chance"] + 0.1 * (1 - refs["topk_acc_chance"]):
            out.append(f"TopK accuracy {mean:.3f} (mean over layers) is at chance ({refs['topk_acc_chance']:.3f}): "
                       "the attention does not select the query's own image")
    span = refs["loss_hc_chance"] - refs["loss_hc_perfect"]
    if s.loss_form and loss_hc > refs["loss_hc_chance"] - 0.1 * span:
        out.append(f"loss_hc {loss_hc:.3f} is at its chance value {refs['loss_hc_chance']:.3f} "
                   f"(perfect: {refs['loss_hc_perfect']:.3f}): homologous recognition has not started")
    return out


class MetricLog:
    """metrics.jsonl of rank 0: a line per logged step (losses, lr, img/s, TopK accuracy), one per epoch
    (the epoch's mean losses, kept in the checkpointed `sums` so that a resumed epoch's mean is exact) and one per
    learning-curve point of a probed run."""

    def __init__(self, run_dir: Path, rank: int, world: int, images: int):
        self.path, self.rank, self.world = run_dir / METRICS, rank, world
        self.window = (time.perf_counter(), images)  # img/s is measured between logged steps

    def values(self, parts: dict[str, torch.Tensor]) -> dict:
        """The step's parts as floats, averaged over processes (one all-reduce per part)."""
        if self.world > 1:
            for v in parts.values():
                dist.all_reduce(v)
                v /= self.world
        return {k: v.tolist() for k, v in parts.items()}

    def write(self, record: dict):
        if self.rank == 0:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")

    def step(self, step: int, epoch: int, lr: float, values: dict, images: int, seconds: float):
        now = time.perf_counter()
        record = {"kind": "step", "step": step, "epoch": epoch, "lr": lr, **{k: values[k] for k in LOSSES},
                  "img_per_s": (images - self.window[1]) / max(now - self.window[0], 1e-9), "seconds": seconds}
        if "topk_acc_layers" in values:
            record["topk_acc"] = float(np.mean(values["topk_acc_layers"]))
            record["topk_acc_layers"] = values["topk_acc_layers"]
        self.write(record)
        self.window = (now, images)

    def epoch(self, step: int, epoch: int, sums: dict, seconds: float, warnings: list[str]):
        """The epoch's means; MixedAE's recognition warnings (recognition_warnings) on the epoch's last
        logged step are printed and kept in the line."""
        self.write({"kind": "epoch", "step": step, "epoch": epoch,
                    **{k: sums[k] / sums["steps"] for k in LOSSES}, "seconds": seconds,
                    **({"warnings": warnings} if warnings else {})})
        if self.rank == 0:
            for w in warnings:
                print(f"warning (epoch {epoch}): {w}", file=sys.stderr, flush=True)

    def curve(self, step: int, epoch: int, point: dict | None):
        """A learning-curve line: the probe's measurements of the model after `epoch` (None: not measured)."""
        if point:
            self.write({"kind": "curve", "step": step, "epoch": epoch, **point})


def probe_model(probe, model, epochs_done: int) -> dict | None:
    """`probe(model, epochs_done)` in eval mode, outside the training's random stream: a run with learning
    curves trains the weights of the same run without them."""
    model.eval()
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        point = probe(model, epochs_done)
    model.train()
    return point and {**point, "probe_seconds": round(time.perf_counter() - t0, 1)}


class StopRequest:
    """Turns SIGTERM/SIGINT into a flag checked between steps (a checkpoint is written, then exit).
    Signal handlers can only be installed from the main thread; elsewhere signals keep their default."""

    def __init__(self):
        self.signum = 0
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGTERM, signal.SIGINT):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signum = signum

    def __exit__(self, *exc):
        for s, handler in self._old.items():
            signal.signal(s, handler)


def agreed(flags, device, world: int) -> list[int]:
    """Each flag's maximum over the processes: all must take the same branch after a step."""
    if world == 1:
        return [int(f) for f in flags]
    values = torch.tensor([float(f) for f in flags], device=device)
    dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return [int(v) for v in values.tolist()]


def divergence(what: str, step: int, steps_per_epoch: int, run_dir: Path, saved_step: int | None):
    """The error of a run whose loss or weights became non-finite at `step`, saying which checkpoint is left."""
    if saved_step is None:
        left = f"no checkpoint was written, so {run_dir} cannot be resumed"
    else:
        left = (f"its last good checkpoint {run_dir / CHECKPOINT}, taken after step {saved_step - 1} (epoch "
                f"{(saved_step - 1) // steps_per_epoch}), is untouched")
    return NonFiniteLossError(f"{what} at step {step} (epoch {step // steps_per_epoch}) of run {run_dir}; {left}. "
                              "Lower blr or check the data.")


# ------------------------------------------------------------------------------------- run directory
def checkpoint_to_resume(config: Config, run_dir: Path, resume: bool, device) -> dict | None:
    """The run directory's checkpoint, read before anything is written there. Refuses a run that is not to be
    resumed, and a checkpoint trained with another config (the checkpoint's config is the run's, whatever
    config.json says)."""
    if not (run_dir / CHECKPOINT).exists():
        return None
    if not resume:
        raise RunExistsError(f"{run_dir} already holds a run (checkpoint.pt): resume it, or choose another directory")
    ckpt = read_checkpoint(run_dir, device)
    trained, requested = Config.from_dict(ckpt["config"]).result_fields(), config.result_fields()
    trained, requested = ({k: fields.get(k, LEGACY_VALUES.get(k)) for k in trained | requested}
                          for fields in (trained, requested))  # a field at its legacy value is left out of both
    changed = [k for k in requested if trained[k] != requested[k]]
    if changed:
        schedule = (" A run cannot be extended: epochs and max_steps shape the learning-rate schedule from its first "
                    "step, so a longer schedule is a new run." if {"epochs", "max_steps"} & set(changed) else "")
        raise RunExistsError(f"cannot resume {run_dir}: its checkpoint was trained with another config ("
                             + "; ".join(f"{k}: checkpoint {trained[k]}, requested {requested[k]}" for k in changed)
                             + f"). Resume with the checkpoint's values, or train in another directory.{schedule}")
    return ckpt


def locked_run_dir(run_dir: Path, rank: int) -> contextlib.AbstractContextManager:
    """The run directory, made if missing and locked by rank 0 for the run's whole life (runfiles.run_lock)."""
    if rank != 0:
        return contextlib.nullcontext()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunFileError(f"cannot use {run_dir} as a run directory ({err.strerror}): choose a writable folder "
                           "with --out") from None
    return run_lock(run_dir)


def save_checkpoint(model, optimizer, state: dict, config: Config, run_dir: Path, rank: int):
    if rank == 0:
        save_atomic({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "state": state,
                     "config": config.to_dict(), "rng": {"torch": torch.get_rng_state()},
                     "code_version": CODE_VERSION}, run_dir / CHECKPOINT)


def resume_state(ckpt: dict | None, model, optimizer, run_dir: Path, rank: int, resume: bool, total: int,
                 steps_per_epoch: int) -> dict:
    """The loop state of `ckpt` (model, optimizer and RNG loaded); metric lines written after that checkpoint
    are dropped, since they will be written again. Without a checkpoint the run starts at step 0."""
    if ckpt is None:
        if rank == 0:
            (run_dir / METRICS).write_text("")
            if resume:
                print(f"no checkpoint in {run_dir}: starting from step 0", flush=True)
        return {"step": 0, "train_seconds": 0.0, "images": 0, "epoch_sums": None}
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    torch.set_rng_state(ckpt["rng"]["torch"].cpu())  # loaded onto the run's device with the rest
    state = ckpt["state"]
    if rank == 0:
        step = state["step"]
        print(f"resuming run {run_dir} " + (f"at step {step} of {total} (epoch {step // steps_per_epoch})"
                                            if step < total else f"after its last step ({total})"), flush=True)
        kept = [m for m in read_metrics(run_dir) if m["step"] < state["step"]]
        write_text_atomic(run_dir / METRICS, "".join(json.dumps(m) + "\n" for m in kept))
    return state


# ------------------------------------------------------------------------------------- the loop
def train(config: Config, run_dir, resume: bool = True, progress: bool = True, stamp=None, probe=None) -> dict:
    """Pre-train `config` in `run_dir` (resuming its checkpoint when `resume`); returns the summary.
    `stamp(device) -> dict`, if given, adds its keys to summary.json (e.g. the code version it ran).
    `probe(model, epochs_done) -> dict | None`, if given, measures the model at the end of every epoch; what it
    returns becomes a learning-curve line of metrics.jsonl (evaluate.LearningCurveProbe)."""
    c, run_dir = config, Path(run_dir)
    rank, world, device = distributed_context(c)
    G = resolve(c).group_size
    if c.batch_size % (c.accum_steps * world * G):
        raise ValueError(f"batch_size {c.batch_size} must split into accum_steps x processes = "
                         f"{c.accum_steps} x {world} micro-batches that are multiples of G = {G}")
    batches = training_batches(c, device, rank, world)  # data errors come before anything is written
    with locked_run_dir(run_dir, rank):
        ckpt = checkpoint_to_resume(c, run_dir, resume, device)
        if rank == 0:
            write_text_atomic(run_dir / CONFIG, json.dumps(c.to_dict(), indent=1))
        return train_locked(c, run_dir, ckpt, resume, batches, rank, world, device, progress, stamp, probe)


def train_locked(c: Config, run_dir: Path, ckpt: dict | None, resume: bool, batches, rank: int, world: int, device,
                 progress: bool, stamp, probe=None) -> dict:
    """train()'s loop, in the run directory it holds the lock of."""
    torch.manual_seed(c.seed)
    model = build_model(c).to(device)
    spe = batches.steps_per_epoch
    total = c.epochs * spe if c.max_steps is None else min(c.epochs * spe, c.max_steps)
    lrs = lr_schedule(c.lr, c.min_lr, total, int(round(c.warmup_epochs * spe)))
    ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if world > 1 else None
    train_step = TrainStep(model, c, ddp)
    state = resume_state(ckpt, model, train_step.optimizer, run_dir, rank, resume, total, spe)
    saved_step, saved_at = (state["step"] if ckpt else None), time.monotonic()
    log = MetricLog(run_dir, rank, world, state["images"])
    bar = tqdm(total=total, initial=state["step"], disable=rank != 0 or not progress, unit="step",
               desc=f"{c.method} {run_dir.name}", dynamic_ncols=True)

    model.train()
    with StopRequest() as stop:
        while state["step"] < total:
            step = state["step"]
            epoch, end_of_epoch = step // spe, (step + 1) % spe == 0 or step + 1 == total
            logged = (step + 1) % c.log_every == 0 or end_of_epoch
            t0 = time.perf_counter()
            values = log.values(train_step(batches.micro_batches(step), float(lrs[step]), diagnostics=logged))
            if not np.isfinite(values["loss"]):
                raise divergence(f"the loss became {values['loss']}", step, spe, run_dir, saved_step)
            state["step"], state["images"] = step + 1, state["images"] + c.batch_size
            state["train_seconds"] += time.perf_counter() - t0
            sums = state["epoch_sums"] or {"steps": 0, **{k: 0.0 for k in LOSSES}}
            state["epoch_sums"] = {"steps": sums["steps"] + 1, **{k: sums[k] + values[k] for k in LOSSES}}
            bar.update(1)
            if logged:
                log.step(step, epoch, float(lrs[step]), values, state["images"], state["train_seconds"])
                bar.set_postfix(loss=f"{values['loss']:.4f}")
            if end_of_epoch:
                log.epoch(step, epoch, state["epoch_sums"], state["train_seconds"],
                          recognition_warnings(c, values["loss_hc"], values.get("topk_acc_layers")))
                state["epoch_sums"] = None
                if probe and rank == 0:  # before the epoch's checkpoint: a run stopped while probing probes again
                    log.curve(step, epoch, probe_model(probe, model, epoch + 1))
                    log.window = (time.perf_counter(), state["images"])  # img/s: training only
            signum, timed = agreed((stop.signum, time.monotonic() - saved_at >= 60 * c.checkpoint_minutes),
                                   device, world)
            if end_of_epoch or timed or signum:
                # A huge update can leave the weights non-finite one step before the loss shows it:
                # never let such weights replace the last good checkpoint.
                if not all(torch.isfinite(p).all() for p in model.parameters()):
                    raise divergence("the weights became non-finite", step, spe, run_dir, saved_step)
                save_checkpoint(model, train_step.optimizer, state, c, run_dir, rank)
                saved_step, saved_at = state["step"], time.monotonic()
            if signum and state["step"] < total:
                bar.close()
                raise SystemExit(f"stopped by signal {signum} at step {state['step']}; the checkpoint "
                                 f"{run_dir / CHECKPOINT} resumes it (--resume, or the run cache)")
    bar.close()
    return write_summary(c, run_dir, state, total, spe, world, device, rank, stamp)


def write_summary(c: Config, run_dir: Path, state: dict, total: int, steps_per_epoch: int, world: int, device,
                  rank: int, stamp=None) -> dict:
    """summary.json, the mark of a finished run."""
    metrics = read_metrics(run_dir) if rank == 0 else []
    epochs = [m for m in metrics if m["kind"] == "epoch"]
    last = next((m for m in reversed(metrics) if m["kind"] == "step"), {})
    summary = {"run": run_dir.name, "config": c.to_dict(), "code_version": CODE_VERSION, "steps": total,
               "epochs_run": total / steps_per_epoch, "images": state["images"],
               "train_seconds": state["train_seconds"], "img_per_s": state["images"] / max(state["train_seconds"], 1e-9),
               "processes": world, "final": epochs[-1] if epochs else None, "device": describe_device(device),
               **({"recognition": {**resolve(c).recognition_references(), "loss_hc": last.get("loss_hc"),
                                   "topk_acc_layers": last.get("topk_acc_layers"),
                                   "warnings": recognition_warnings(c, last.get("loss_hc", 0.0), last.get("topk_acc_layers"))}}
                  if c.method == "mixedae" else {}),
               **(stamp(device) if stamp else {})}
    if rank == 0:
        write_text_atomic(run_dir / SUMMARY, json.dumps(summary, indent=1))
        print(f"{c.method}: {total} steps in {state['train_seconds']:.1f} s ({summary['img_per_s']:.0f} img/s on "
              f"{summary['device']}); final loss {summary['final']['loss']:.4f}; run dir {run_dir}")
    return summary
