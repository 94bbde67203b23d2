"""Pre-training: `train(config, run_dir)`, from one CPU core to torchrun on many GPUs, and the run cache.

A run directory holds config.json, metrics.jsonl (one JSON object per logged step and per epoch),
checkpoint.pt (written atomically at every epoch end, on SIGTERM/SIGINT and at the end) and, once the
run has finished, summary.json.

Every random draw of step s (batch order, crops, flips, masking or mixing noise) comes from generators
seeded with (seed, epoch) or (seed, s) and is drawn for the whole global batch on every process, which
then takes its own shard. So a resumed run, and a run on any number of processes, sees exactly the
batches of one uninterrupted single-process run (for device-resident datasets).
"""
import contextlib
import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from .config import Config, run_key
from .data import imagefolder_loader, load_dataset, normalize, random_resized_crop_flip, epoch_order
from .model import build_model
from .provenance import REPO, provenance

CODE_VERSION = "1"  # bump when a change alters what a run computes: cached runs are then retrained
NO_WEIGHT_DECAY = ("cls_token", "mask_token", "pos_embed", "decoder_pos_embed", "seg_embed")


class NonFiniteLossError(RuntimeError):
    pass


class RunExistsError(RuntimeError):
    pass


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


# ------------------------------------------------------------------------------------- processes, devices
def distributed_context(config: Config):
    """(rank, world size, device) from torchrun's environment; initialises the process group
    (NCCL for CUDA runs, gloo for CPU runs)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(config, local_rank)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def resolve_device(config: Config, local_rank: int = 0) -> torch.device:
    if config.device == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if config.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={config.device!r} but no CUDA device is visible; use --device cpu")
    if config.device == "cuda":
        return torch.device(f"cuda:{local_rank}")
    return torch.device(config.device)


def step_generator(seed: int, stream: int, index: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device).manual_seed(seed * 1_000_003 + stream * 7_919 + index)


# ------------------------------------------------------------------------------------- batches
class DeviceBatches:
    """A device-resident dataset cut into global batches; each process takes its shard of each one."""

    def __init__(self, config: Config, device, rank: int, world: int):
        self.config, self.device, self.rank, self.world = config, device, rank, world
        data = load_dataset(config.dataset_kind, "train", config.img_size, config.in_chans, config.download,
                            config.synthetic_size, config.seed)
        self.data = data.subset(config.train_subset).to(device)
        self.name = data.name
        self._order_epoch, self._order = None, None
        self.steps_per_epoch = len(self._epoch_order(0)) // config.batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(f"{len(self.data)} training images give no full batch of {config.batch_size}")

    def _epoch_order(self, epoch):
        if epoch != self._order_epoch:
            c = self.config
            g = step_generator(c.seed, 1, epoch, torch.device("cpu"))
            self._order = epoch_order(self.data.labels, c.batch_size, c.group_size, c.group_by, g).to(self.device)
            self._order_epoch = epoch
        return self._order

    def micro_batches(self, step: int):
        """[(images, noise)] for this process: accum_steps micro-batches of the global batch of `step`."""
        c = self.config
        epoch, i = divmod(step, self.steps_per_epoch)
        idx = self._epoch_order(epoch)[i * c.batch_size:(i + 1) * c.batch_size]
        g = step_generator(c.seed, 2, step, self.device)
        images = random_resized_crop_flip(normalize(self.data.images[idx], self.name), c.img_size, g)
        noise = torch.rand(c.batch_size // c.group_size, c.num_patches, generator=g, device=self.device)
        m = c.batch_size // (c.accum_steps * self.world)
        out = []
        for a in range(c.accum_steps):
            j = a * self.world + self.rank
            out.append((images[j * m:(j + 1) * m], noise[j * m // c.group_size:(j + 1) * m // c.group_size]))
        return out


class FolderBatches:
    """An image folder through DataLoader workers (ImageNet-scale data); shards by DistributedSampler."""

    def __init__(self, config: Config, device, rank: int, world: int):
        self.config, self.device, self.rank = config, device, rank
        m = config.batch_size // (config.accum_steps * world)
        self.loader = imagefolder_loader(config.dataset.split(":", 1)[1], config.img_size, m, config.workers,
                                         config.seed, rank, world)
        self.steps_per_epoch = len(self.loader) // config.accum_steps
        self._epoch, self._iter = None, None

    def micro_batches(self, step: int):
        c = self.config
        epoch, i = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:  # after a resume mid-epoch, skip the batches already seen
            self.loader.sampler.set_epoch(epoch)
            self._iter, self._epoch = iter(self.loader), epoch
            for _ in range(i * c.accum_steps):
                next(self._iter)
        g = step_generator(c.seed, 3, step * 1000 + self.rank, self.device)
        out = []
        for _ in range(c.accum_steps):
            images = next(self._iter)[0].to(self.device, non_blocking=True)
            out.append((images, torch.rand(len(images) // c.group_size, c.num_patches, generator=g, device=self.device)))
        return out


# ------------------------------------------------------------------------------------- checkpoints
def save_atomic(obj, path: Path):
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def write_text_atomic(path: Path, text: str):
    """Readers never see a half-written file: write beside it, then rename."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # several processes may write the same file
    tmp.write_text(text)
    os.replace(tmp, path)


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def load_model(run_dir, device="cpu"):
    """(model in eval mode, Config) of a run directory's newest checkpoint."""
    ckpt = torch.load(Path(run_dir) / "checkpoint.pt", map_location=device, weights_only=False)
    config = Config(**ckpt["config"])
    model = build_model(config).to(device)
    model.load_state_dict(ckpt["model"])
    return model.eval(), config


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


# ------------------------------------------------------------------------------------- the loop
def train(config: Config, run_dir, resume: bool = True, progress: bool = True) -> dict:
    """Pre-train `config` in `run_dir` (resuming its checkpoint when `resume`); returns the summary."""
    run_dir = Path(run_dir)
    rank, world, device = distributed_context(config)
    c = config
    if c.batch_size % (c.accum_steps * world * c.group_size):
        raise ValueError(f"batch_size {c.batch_size} must split into accum_steps x processes = "
                         f"{c.accum_steps} x {world} micro-batches that are multiples of G = {c.group_size}")
    ckpt_path = run_dir / "checkpoint.pt"
    if ckpt_path.exists() and not resume:
        raise RunExistsError(f"{run_dir} already holds a run (checkpoint.pt): resume it, or choose another directory")
    saved = run_dir / "config.json"
    if saved.exists() and ckpt_path.exists() and Config(**json.loads(saved.read_text())) != c:
        raise RunExistsError(f"{run_dir} holds a run with another config (see its config.json); "
                             "choose another directory")
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(saved, json.dumps(c.to_dict(), indent=1))

    torch.manual_seed(c.seed)
    model = build_model(c).to(device)
    batches = (FolderBatches if c.dataset_kind == "imagefolder" else DeviceBatches)(c, device, rank, world)
    spe = batches.steps_per_epoch
    total = c.epochs * spe if c.max_steps is None else min(c.epochs * spe, c.max_steps)
    lrs = lr_schedule(c.lr, c.min_lr, total, int(round(c.warmup_epochs * spe)))
    optimizer = torch.optim.AdamW(param_groups(model, c.weight_decay), lr=c.lr, betas=(c.beta1, c.beta2))

    state = {"step": 0, "train_seconds": 0.0, "images": 0, "epoch_sums": None}
    if resume and ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=False)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        state = ckpt["state"]
        torch.set_rng_state(ckpt["rng"]["torch"])
        if rank == 0:  # and drop metric lines written after the checkpoint (they will be written again)
            print(f"resuming {run_dir} at step {state['step']} of {total}", flush=True)
            kept = [m for m in read_metrics(run_dir) if m["step"] < state["step"]]
            write_text_atomic(run_dir / "metrics.jsonl", "".join(json.dumps(m) + "\n" for m in kept))
    elif rank == 0:
        (run_dir / "metrics.jsonl").write_text("")

    ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if world > 1 else model
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    keys = ("loss", "loss_rec", "loss_hc")

    def checkpoint():
        # A huge update can leave the weights non-finite one step before the loss shows it:
        # never let such weights replace the last good checkpoint.
        if not all(torch.isfinite(p).all() for p in model.parameters()):
            raise NonFiniteLossError(
                f"the weights became non-finite by step {state['step'] - 1} (epoch {state['step'] // spe}) "
                f"of run {run_dir}; the last good checkpoint {ckpt_path} is untouched. Lower blr or check the data.")
        if rank == 0:
            save_atomic({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "state": state,
                         "config": c.to_dict(), "rng": {"torch": torch.get_rng_state()},
                         "code_version": CODE_VERSION}, ckpt_path)

    def log(record):
        if rank == 0:
            with open(run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    def reduce_mean(t):
        if world > 1:
            dist.all_reduce(t)
            t /= world
        return t

    bar = tqdm(total=total, initial=state["step"], disable=rank != 0 or not progress, unit="step",
               desc=f"{c.method} {run_dir.name}", dynamic_ncols=True)
    window = {"t": time.perf_counter(), "images": 0}
    model.train()
    with StopRequest() as stop:
        while state["step"] < total:
            step = state["step"]
            epoch = step // spe
            diagnose = (step + 1) % c.log_every == 0 or (step + 1) % spe == 0 or step + 1 == total
            t0 = time.perf_counter()
            for g in optimizer.param_groups:
                g["lr"] = float(lrs[step])
            # loss parts, mean TopK accuracy, then TopK accuracy of each homologous layer
            sums = torch.zeros(len(keys) + 1 + len(c.resolved_homologous_layers), device=device)
            micro = batches.micro_batches(step)
            for a, (images, noise) in enumerate(micro):
                sync = a == len(micro) - 1
                with (contextlib.nullcontext() if sync or world == 1 else ddp.no_sync()), autocast:
                    out = ddp(images, noise=noise, diagnostics=diagnose and c.method == "mixedae")
                (out.loss / len(micro)).backward()
                sums[:3] += torch.stack([getattr(out, k).detach().float() for k in keys]) / len(micro)
                if out.topk_acc is not None:
                    sums[3] += out.topk_acc.float().mean() / len(micro)
                    sums[4:] += out.topk_acc.float() / len(micro)
            sums = reduce_mean(sums)
            if not torch.isfinite(sums[0]):
                raise NonFiniteLossError(
                    f"the loss became {sums[0].item()} at step {step} (epoch {epoch}) of run {run_dir}; "
                    f"the last good checkpoint {ckpt_path} is untouched. Lower blr or check the data.")
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

            state["step"] = step + 1
            state["images"] += c.batch_size
            state["train_seconds"] += time.perf_counter() - t0
            window["images"] += c.batch_size
            epoch_sums = state["epoch_sums"] if state["epoch_sums"] is not None else [0.0] * (len(keys) + 1)
            values = sums.tolist()
            state["epoch_sums"] = [s + v for s, v in zip(epoch_sums, values[:len(keys)] + [1.0])]  # + step count
            bar.update(1)
            if diagnose:
                now = time.perf_counter()
                record = {"kind": "step", "step": step, "epoch": epoch, "lr": float(lrs[step]),
                          **dict(zip(keys, values[:3])),
                          "img_per_s": window["images"] / max(now - window["t"], 1e-9),
                          "seconds": state["train_seconds"]}
                if c.method == "mixedae":
                    record["topk_acc"] = values[3]
                    record["topk_acc_layers"] = values[4:]
                log(record)
                bar.set_postfix(loss=f"{values[0]:.4f}")
                window = {"t": now, "images": 0}
            end_of_epoch = (step + 1) % spe == 0 or step + 1 == total
            if end_of_epoch:
                n = state["epoch_sums"][-1]
                record = {"kind": "epoch", "step": step, "epoch": epoch,
                          **{k: state["epoch_sums"][i] / n for i, k in enumerate(keys)},
                          "seconds": state["train_seconds"]}
                log(record)
                state["epoch_sums"] = None
                checkpoint()
            signum = stop.signum
            if world > 1:  # every process must stop after the same step
                flag = torch.tensor(float(signum), device=device)
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                signum = int(flag.item())
            if signum and state["step"] < total:
                if not end_of_epoch:
                    checkpoint()
                bar.close()
                raise SystemExit(f"stopped by signal {signum} at step {state['step']}; the checkpoint "
                                 f"{ckpt_path} resumes it (--resume, or ensure_run)")
    bar.close()

    epochs = [m for m in read_metrics(run_dir) if m["kind"] == "epoch"] if rank == 0 else []
    summary = {"run": run_dir.name, "config": c.to_dict(), "code_version": CODE_VERSION, "steps": total,
               "epochs_run": total / spe, "images": state["images"], "train_seconds": state["train_seconds"],
               "img_per_s": state["images"] / max(state["train_seconds"], 1e-9), "processes": world,
               "final": epochs[-1] if epochs else None, "provenance": provenance(device)}
    if rank == 0:
        write_text_atomic(run_dir / "summary.json", json.dumps(summary, indent=1))
        print(f"{c.method}: {total} steps in {state['train_seconds']:.1f} s "
              f"({summary['img_per_s']:.0f} img/s on {summary['provenance']['device']}); "
              f"final loss {summary['final']['loss']:.4f}; run dir {run_dir}")
    return summary


# ------------------------------------------------------------------------------------- run cache
def runs_root() -> Path:
    return Path(os.environ.get("MIXEDAE_RUNS", REPO / "runs"))


def run_dir_for(config: Config, root=None) -> Path:
    return Path(root or runs_root()) / f"{config.method}-{run_key(config, CODE_VERSION)}"


def run_finished(run_dir: Path) -> bool:
    """Finished and still holding its checkpoint (the model, not only the numbers)."""
    return (run_dir / "summary.json").exists() and (run_dir / "checkpoint.pt").exists()


def ensure_run(config: Config, root=None, progress: bool = True) -> Path:
    """The finished run of `config` with its checkpoint: cached if it exists, resumed if it was interrupted,
    else trained (also when its checkpoint was deleted)."""
    run_dir = run_dir_for(config, root)
    if not run_finished(run_dir):
        train(config, run_dir, resume=True, progress=progress)
    return run_dir
